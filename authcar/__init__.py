"""authcar: an authentication and authorization sidecar for Kubernetes pods."""

__version__ = "0.1.0"
