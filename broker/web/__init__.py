"""Server-rendered pages (Jinja2): consent, login, errors. Plain HTML that works without JavaScript."""
