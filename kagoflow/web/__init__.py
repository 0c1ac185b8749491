"""The worker's HTTP server: operator API and the tracking endpoints mail recipients reach."""
