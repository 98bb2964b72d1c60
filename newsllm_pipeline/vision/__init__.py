"""The image-description service: an HTTP server around one describer (`server`) and its client (`client`).

The server answers the original project's REST API (`/analyze`, `/analyze_base64`, `/status`, `/health`) and
OpenAI's `/v1/chat/completions`, so the pipeline's `openai` describer and Docling's picture-description API
option can use it as well as people.
"""
