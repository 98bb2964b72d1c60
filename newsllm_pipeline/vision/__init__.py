"""The image-description service: an HTTP server around one describer and its client (`client`).

The server answers the original project's REST API (`/analyze`, `/analyze_base64`, `/status`, `/health`) and
OpenAI's `/v1/chat/completions`, so the pipeline's `openai` describer and Docling's picture-description API
option can use it as well as people. One module per job: `uploads` (image checks and limits), `request_bodies`
(what clients send, parsed), `errors` (the APIs' error bodies), `service` (the describer behind bounded call
slots and the endpoints), `app` (the ASGI app behind the request gate), `server` (start-up), and `page.html`
(the upload page). The token, body-size and request-count gate, the call slots and the start-up it shares with
the resident categoriser are in `newsllm_pipeline.serving`.
"""
