-- wrk script for the upload-1m workload: every request a POST of 1 MiB (Content-Length framed).
wrk.method = "POST"
wrk.body = string.rep("0123456789abcdef", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
