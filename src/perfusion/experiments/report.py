"""A self-contained HTML report: sections of text, image grids (linked by relative path) and tables."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from perfusion.files import atomic_write

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
figure{display:inline-block;margin:4px;text-align:center;vertical-align:top}
figure img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:11px;max-width:128px}
img.plot{max-width:640px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
.row{margin:0.5em 0}.row>b{display:block;font-size:13px;margin:4px}"""


@dataclass
class ImageRow:
    title: str
    images: list[tuple[Path, str]]  # (path, caption)


@dataclass
class Section:
    heading: str
    text: str = ""
    rows: list[ImageRow] = field(default_factory=list)
    table: list[dict] | None = None
    plot: Path | None = None


def render(title: str, sections: list[Section], base: Path) -> str:
    def link(path: Path) -> str:
        return html.escape(str(Path(path).resolve().relative_to(base.resolve())))

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        if section.plot is not None:
            parts.append(f"<img class='plot' src='{link(section.plot)}' alt='{html.escape(section.heading)}'>")
        if section.table:
            columns = list(section.table[0])
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
            for record in section.table:
                parts.append(
                    "<tr>" + "".join(f"<td>{html.escape(format_cell(record[c]))}</td>" for c in columns) + "</tr>"
                )
            parts.append("</table>")
        for row in section.rows:
            parts.append(f"<div class='row'><b>{html.escape(row.title)}</b>")
            for path, caption in row.images:
                parts.append(
                    f"<figure><img src='{link(path)}' alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def write_report(path: Path, title: str, sections: list[Section]) -> Path:
    text = render(title, sections, path.parent)
    return atomic_write(path, lambda temporary: temporary.write_text(text))
