"""Drawing a query and its hits side by side, each titled with its score, into one image file."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from retrieval.errors import ImageError, UsageError
from retrieval.io.durable import write_atomically
from retrieval.io.files import printable
from retrieval.io.images import load_thumbnail
from retrieval.search.searcher import QueryResult

TILE = 256  # square area each picture is fitted into
CAPTION = 52  # room under each picture for the score and the file name
MARGIN = 12
MAX_COLUMNS = 6
QUERY_COLOR = (30, 90, 200)
TEXT_COLOR = (20, 20, 20)
MUTED_COLOR = (110, 110, 110)


def render(result: QueryResult, out: Path, max_pixels: int, first: str = "Query") -> Path:
    """Write the query and every hit as a grid of titled tiles to `out` (format from its extension); the
    query's tile is titled `first` (a group of duplicates names its kept image "Keep")."""
    titles = [(first, result.query.name, result.query)]
    label = "Similarity" if result.metric == "cosine" else "Distance"
    titles += [(f"#{h.rank}  {label}: {h.score:.3f}", h.path, result.absolute(h)) for h in result.hits]
    columns = min(len(titles), MAX_COLUMNS)
    rows = math.ceil(len(titles) / columns)
    cell_w, cell_h = TILE + MARGIN, TILE + CAPTION + MARGIN
    sheet = Image.new("RGB", (columns * cell_w + MARGIN, rows * cell_h + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    title_font, name_font = ImageFont.load_default(size=20), ImageFont.load_default(size=13)
    for i, (title, name, path) in enumerate(titles):
        x = MARGIN + (i % columns) * cell_w
        y = MARGIN + (i // columns) * cell_h
        _paste_picture(sheet, draw, path, (x, y), max_pixels)
        if i == 0:
            draw.rectangle((x - 3, y - 3, x + TILE + 2, y + TILE + 2), outline=QUERY_COLOR, width=3)
        draw.text((x, y + TILE + 6), title, font=title_font, fill=QUERY_COLOR if i == 0 else TEXT_COLOR)
        draw.text((x, y + TILE + 32), _fit(printable(name), name_font, TILE), font=name_font, fill=MUTED_COLOR)
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format is None:
        raise UsageError(f"cannot write a collage to {out}: use a .png or .jpg file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda f: sheet.save(f, format=image_format))
    return out


def _paste_picture(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, path: Path, at: tuple[int, int], max_pixels: int
) -> None:
    """Centre the picture in its tile; a hit whose file is gone or broken becomes a grey tile saying so."""
    x, y = at
    try:
        picture = load_thumbnail(path, TILE, max_pixels)
    except ImageError as e:
        draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), fill=(225, 225, 225))
        draw.text((x + 10, y + TILE // 2 - 8), f"unreadable: {e.reason}", fill=MUTED_COLOR)
        return
    sheet.paste(picture, (x + (TILE - picture.width) // 2, y + (TILE - picture.height) // 2))


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """Shorten `text` from the left with an ellipsis so it fits `width` pixels: the end of a path matters most."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text
