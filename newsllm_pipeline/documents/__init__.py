"""Documents: raw files to Docling Markdown with extracted images (offline layout recovery)."""
