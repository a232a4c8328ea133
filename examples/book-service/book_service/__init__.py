"""The book service: books and reviews behind the authcar sidecar, trusting only its signed assertion."""

from book_service.app import build_app
from book_service.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "build_app"]
