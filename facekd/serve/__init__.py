"""``facekd serve``: embedding, verification and 1:N identification over HTTP.

:func:`facekd.serve.app.create_app` builds the FastAPI application from a
:class:`facekd.serve.settings.ServeSettings`; ``facekd serve`` runs it on uvicorn.
Nothing is loaded when this package is imported.
"""
