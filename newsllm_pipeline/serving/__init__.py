"""What the project's HTTP services share: the image-description server (`vision`) and the resident categoriser
(`categorizer.server`). `errors` (the refusal every endpoint raises and a plain JSON error body), `gate` (bearer
token, body size, request counts, one log line), `slots` (model calls on their own threads, a bounded number at
once and a bounded queue), `app` (a Starlette app behind the gate) and `server` (start-up: the token from the
environment, uvicorn in the foreground or in a thread).
"""
