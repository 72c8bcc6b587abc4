"""What the service shows to a browser: shared static assets, the API reference
at `/docs`, and the page security headers the console uses too."""
