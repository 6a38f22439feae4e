"""The web page and JSON API served inside `python -m device run` (issue #14).

Only the modules that serve HTTP (`server`, `routes`, `live`, ...) import the web framework
(Starlette on uvicorn); `password` and `security` are plain Python so that `import device`, the
`web set-password` command and the start-up checks work without it.
"""
