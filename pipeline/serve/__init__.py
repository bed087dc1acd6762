"""What an operator or a scraper talks to while the pipeline runs: the web app (``web``) and the
Prometheus endpoint (``metrics_http``).
"""
