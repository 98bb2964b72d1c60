"""Bad and unusual input to `convert_document`, with PDFs written here byte by byte: a clear
DocumentConversionError naming the file (and nothing written) for what cannot be converted, a clean
conversion for what is merely unusual, and a batch that goes on past a bad file."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import time

import pytest
from PIL import Image

from newsllm_pipeline.documents.conversion import DocumentConversionError, convert_document, offline_converter

A4 = (595, 842)
A0 = (2384, 3370)
# PDF 32000-1 §7.6.3.3, algorithm 2: passwords are padded (or cut) to 32 bytes with this string.
PASSWORD_PADDING = bytes.fromhex("28bf4e5e4e758a4164004e56fffa01082e2e00b6d0683e802f0ca9fe6453697a")
PRINT_AND_COPY_ONLY = -44  # /P bits: print and copy allowed, modify and annotate not


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def _rc4_twenty_rounds(key: bytes, data: bytes) -> bytes:
    """Algorithms 3 and 5, revision 3: RC4 with the key, then 19 times with the key XOR 1..19."""
    for round_number in range(20):
        data = _rc4(bytes(byte ^ round_number for byte in key), data)
    return data


def _standard_security(user_password: str, owner_password: str, file_id: bytes) -> tuple[bytes, bytes, bytes]:
    """The /O and /U entries and the file key of the Standard security handler, revision 3 (RC4, 128 bits),
    as PDF 32000-1 §7.6.3 describes them (algorithms 2, 3 and 5): what `qpdf --encrypt` would write."""

    def padded(password: str) -> bytes:
        return (password.encode("latin-1") + PASSWORD_PADDING)[:32]

    def md5_51_times(data: bytes) -> bytes:
        digest = hashlib.md5(data).digest()
        for _ in range(50):
            digest = hashlib.md5(digest).digest()
        return digest

    owner_entry = _rc4_twenty_rounds(md5_51_times(padded(owner_password)), padded(user_password))
    key = md5_51_times(padded(user_password) + owner_entry + struct.pack("<i", PRINT_AND_COPY_ONLY) + file_id)
    user_entry = _rc4_twenty_rounds(key, hashlib.md5(PASSWORD_PADDING + file_id).digest()) + bytes(16)
    return owner_entry, user_entry, key


def _text_content(lines: list[str], page_height: int) -> bytes:
    """Helvetica 12 pt lines from the top-left margin down."""
    escaped = [
        line.encode("cp1252").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") for line in lines
    ]
    return b"\n".join(
        [b"BT /F1 12 Tf 14 TL 72 %d Td" % (page_height - 72), *(b"(%s) Tj T*" % e for e in escaped), b"ET"]
    )


def text_pdf(pages: list[list[str]], size: tuple[int, int] = A4, user_password: str | None = None) -> bytes:
    """A PDF with one page per list of text lines (an empty list is an empty page), no pictures. With
    `user_password` it is encrypted so that no reader opens it without that password ("" opens it freely,
    only the permissions are restricted, as in many publishers' PDFs)."""
    width, height = size
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (4 + 2 * k) for k in range(len(pages))), len(pages)),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    contents = {}
    for k, lines in enumerate(pages):
        objects[4 + 2 * k] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R"
            b" /Resources << /Font << /F1 3 0 R >> >> >>" % (width, height, 5 + 2 * k)
        )
        contents[5 + 2 * k] = _text_content(lines, height) if lines else b""
    file_id = hashlib.md5(repr((pages, size)).encode()).digest()
    trailer = b"/ID [<%s> <%s>]" % (file_id.hex().encode(), file_id.hex().encode())
    if user_password is not None:
        owner_entry, user_entry, key = _standard_security(user_password, "propietario", file_id)
        encrypt_number = 4 + 2 * len(pages)
        objects[encrypt_number] = b"<< /Filter /Standard /V 2 /R 3 /Length 128 /P %d /O <%s> /U <%s> >>" % (
            PRINT_AND_COPY_ONLY,
            owner_entry.hex().encode(),
            user_entry.hex().encode(),
        )
        trailer += b" /Encrypt %d 0 R" % encrypt_number
        # Algorithm 1: each stream is RC4-encrypted with MD5(key + object number + generation).
        contents = {
            number: _rc4(hashlib.md5(key + struct.pack("<i", number)[:3] + b"\0\0").digest(), data)
            for number, data in contents.items()
        }
    for number, data in contents.items():
        objects[number] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(data), data)

    pdf = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number in range(1, len(objects) + 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    pdf += b"trailer\n<< /Size %d /Root 1 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(pdf)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "steelblue").save(buffer, format="PNG")
    return buffer.getvalue()


ARTICLE = ["El Ayuntamiento aprueba el plan de movilidad.", "La medida entrara en vigor en enero."]
CLOSING = ["Los vecinos presentaron alegaciones al proyecto."]
LOGIN_PAGE = (
    b"<!DOCTYPE html><html><head><title>Acceso restringido</title></head>"
    b"<body><h1>Inicie sesion</h1><p>Este documento es solo para suscriptores.</p></body></html>"
)
BAD_FILES = {
    "encrypted": lambda: text_pdf([ARTICLE], user_password="secreto"),
    "html_page": lambda: LOGIN_PAGE,
    "png_image": png_bytes,
    "zero_bytes": lambda: b"",
}


@pytest.fixture(scope="module")
def converter():
    return offline_converter()


def test_the_generated_encrypted_pdf_needs_its_password():
    """The hand-built encryption is real: PDFium opens the file with the password and refuses it without."""
    import pypdfium2 as pdfium

    data = text_pdf([ARTICLE], user_password="secreto")
    with pytest.raises(pdfium.PdfiumError, match="password"):
        pdfium.PdfDocument(data)
    text = pdfium.PdfDocument(data, password="secreto")[0].get_textpage().get_text_range()
    assert ARTICLE[0] in text


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_file_is_an_error_naming_it_and_nothing_is_written(converter, tmp_path, kind):
    source = tmp_path / "informe.pdf"
    source.write_bytes(BAD_FILES[kind]())
    with pytest.raises(DocumentConversionError, match=re.escape(str(source))):
        convert_document(source, tmp_path / "out" / "informe", converter)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("encrypted", r"password|encrypt"),
        ("html_page", r"HTML.*not a PDF|not a PDF.*HTML"),
        ("png_image", r"(PNG|image).*not a PDF|not a PDF.*(PNG|image)"),
        ("zero_bytes", r"empty|0 bytes"),
    ],
)
def test_the_error_says_what_is_wrong_with_the_file(converter, tmp_path, kind, reason):
    source = tmp_path / "informe.pdf"
    source.write_bytes(BAD_FILES[kind]())
    with pytest.raises(DocumentConversionError) as error:
        convert_document(source, tmp_path / "out" / "informe", converter)
    message = str(error.value)
    assert str(source) in message, message
    # The reason must come from the file, not from words in its path.
    assert re.search(reason, message.replace(str(source), "<source>"), re.IGNORECASE), message


def test_a_pdf_restricted_only_by_an_owner_password_converts(converter, tmp_path):
    source = tmp_path / "restringido.pdf"
    source.write_bytes(text_pdf([ARTICLE], user_password=""))
    converted = convert_document(source, tmp_path / "restringido", converter)
    assert ARTICLE[0] in converted.markdown_path.read_text(encoding="utf-8")


def test_an_empty_page_among_text_pages_keeps_the_other_pages_text(converter, tmp_path):
    source = tmp_path / "con_pagina_vacia.pdf"
    source.write_bytes(text_pdf([ARTICLE, [], CLOSING]))
    converted = convert_document(source, tmp_path / "con_pagina_vacia", converter)
    markdown = converted.markdown_path.read_text(encoding="utf-8")
    assert converted.pages == 3
    assert 0 <= markdown.index(ARTICLE[0]) < markdown.index(ARTICLE[1]) < markdown.index(CLOSING[0])


def test_a_pdf_without_pictures_has_no_images(converter, tmp_path):
    source = tmp_path / "solo_texto.pdf"
    source.write_bytes(text_pdf([ARTICLE, CLOSING]))
    converted = convert_document(source, tmp_path / "solo_texto", converter)
    assert converted.pictures == 0 and converted.images == []
    assert "![" not in converted.markdown_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("size", [(5000, 5000), A0], ids=["5000pt_square", "A0"])
def test_a_very_large_page_converts_in_reasonable_time(converter, tmp_path, size):
    source = tmp_path / "gigante.pdf"
    source.write_bytes(text_pdf([[f"Linea {n} de un cartel enorme." for n in range(1, 41)]], size=size))
    started = time.perf_counter()
    converted = convert_document(source, tmp_path / "gigante", converter)
    assert time.perf_counter() - started < 30
    markdown = converted.markdown_path.read_text(encoding="utf-8")
    assert "Linea 1 de un cartel enorme." in markdown and "Linea 40 de un cartel enorme." in markdown


def test_a_batch_goes_on_past_a_corrupt_file(converter, tmp_path):
    """The loop an asset runs over a folder of PDFs: the bad one is recorded, the others are converted."""
    sources = [tmp_path / "primero.pdf", tmp_path / "roto.pdf", tmp_path / "ultimo.pdf"]
    sources[0].write_bytes(text_pdf([ARTICLE]))
    sources[1].write_bytes(text_pdf([ARTICLE])[:300])  # a download cut short
    sources[2].write_bytes(text_pdf([CLOSING]))

    converted, errors = {}, {}
    for source in sources:
        try:
            converted[source.name] = convert_document(source, tmp_path / "out" / source.stem, converter)
        except DocumentConversionError as error:
            errors[source.name] = str(error)

    assert list(converted) == ["primero.pdf", "ultimo.pdf"] and list(errors) == ["roto.pdf"]
    assert "roto.pdf" in errors["roto.pdf"] and not (tmp_path / "out" / "roto").exists()
    assert CLOSING[0] in converted["ultimo.pdf"].markdown_path.read_text(encoding="utf-8")
