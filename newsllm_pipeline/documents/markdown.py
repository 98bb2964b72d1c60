"""Markdown patterns shared by the steps that read Docling's Markdown."""

import re

HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)  # Docling's "<!-- image -->" placeholders among them
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]*)\)")  # group 1: the image's path
ESCAPED_CHARACTER = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")
WORD = re.compile(r"\w+")
