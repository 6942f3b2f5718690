"""A report as a list of blocks, rendered to markdown or to one self-contained HTML file.

The HTML embeds every image as a base64 ``data:image/png`` URI and carries its own small style
sheet, so the file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Image:
    path: Path
    """Absolute path of the PNG; markdown links it relative to the report's folder."""
    caption: str


Block = Heading | Paragraph | Table | Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
strong { color: #c0392b; }
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """Markdown; image links are relative to ``base`` (the folder the file is written to)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_cell(c) for c in block.header) + " |"]
            lines.append("|" + "|".join("---" for _ in block.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        else:
            parts.append(f"![{block.caption}]({block.path.relative_to(base).as_posix()})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn markdown ``**bold**`` and `` `code` `` spans into tags."""
    out, bold, code = [], False, False
    for index, chunk in enumerate(html.escape(text).replace("**", "\0").split("\0")):
        if index:
            out.append("</strong>" if bold else "<strong>")
            bold = not bold
        pieces = chunk.split("`")
        for j, piece in enumerate(pieces):
            if j:
                out.append("</code>" if code else "<code>")
                code = not code
            out.append(piece)
    return "".join(out)


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained HTML page: inline style, images as base64 data URIs, no external resources."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(c)}</th>" for c in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            encoded = base64.b64encode(block.path.read_bytes()).decode("ascii")
            caption = html.escape(block.caption)
            body.append(
                f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
