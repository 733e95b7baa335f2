"""Generate a small synthetic catalogue whose quality label depends on image, text and attributes.

The layout matches the real catalogues (products.csv plus images/<product_id>.png), and
`training/specs/sample.yaml` describes its columns. Each product has three hidden scores, one per
modality, and the label is their sum plus category effects and noise:

    quality_score = 3 + 0.45 * image_score + 0.45 * text_score + category effect
                    + 0.35 * (standardised log price) + 0.1 * (warranty years - 2) + N(0, 0.2)

The image score sets how bright and saturated the product is drawn and how many dark scratches
cross it. The text score picks the title's adjective and one sentence of the description. Hue,
shape, brand and weight are noise, so a model must read each modality to predict the label well.
"""

from __future__ import annotations

import argparse
import colorsys
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

IMAGE_SIZE = 96  # pixels per side of the generated PNGs

# Title adjectives from worst to best. The text score picks one by position.
ADJECTIVES = (
    "flimsy",
    "cheap",
    "wobbly",
    "basic",
    "plain",
    "standard",
    "solid",
    "sturdy",
    "durable",
    "premium",
    "deluxe",
    "handcrafted",
)
# Description sentences from worst to best, picked the same way.
QUALITY_SENTENCES = (
    "Parts may crack or come loose after a few uses.",
    "The finish shows marks and rough edges.",
    "It does the job for occasional use.",
    "Well made and finished with care.",
    "Built to last for years, with a flawless finish.",
)
FILLER_SENTENCES = (
    "Ships in recyclable packaging.",
    "Easy to clean with a damp cloth.",
    "Available in several colours.",
    "Fits most homes and offices.",
    "Assembly takes a few minutes.",
    "Includes a printed user guide.",
)
MATERIALS = ("steel", "bamboo", "ceramic", "plastic", "oak", "glass", "cotton", "aluminium")


@dataclass(frozen=True)
class _Category:
    name: str
    nouns: tuple[str, ...]
    effect: float  # added to the label
    log_price: float  # mean natural log of the price in USD


CATEGORIES = (
    _Category("kitchen", ("mug", "kettle", "pan", "bowl"), 0.3, math.log(25.0)),
    _Category("garden", ("planter", "hose", "shovel", "lantern"), -0.2, math.log(40.0)),
    _Category("toys", ("puzzle", "robot", "kite", "ball"), 0.0, math.log(18.0)),
    _Category("office", ("lamp", "stapler", "organiser", "chair"), -0.3, math.log(60.0)),
    _Category("sports", ("racket", "helmet", "bottle", "mat"), 0.2, math.log(35.0)),
)
BRANDS = ("Acme", "Borealis", "Cobalt", "Dunmore", "Elara", "Fjord", "Granite", "Halcyon")
SHAPES = ("ellipse", "rectangle", "triangle", "diamond")


def generate_sample_catalogue(
    out_dir: Path | str, *, n_products: int = 400, seed: int = 0, missing_image_fraction: float = 0.0
) -> Path:
    """Write a synthetic catalogue (products.csv and images/*.png) to `out_dir` and return it.

    The same seed writes byte-identical files. About 8% of prices and 15% of brands are empty.
    With `missing_image_fraction` > 0, that share of products lists an image file that is not
    written, to exercise the missing-image path. Existing files of the same names are overwritten.
    """
    if n_products < 1:
        raise ValueError(f"n_products must be at least 1, got {n_products}")
    if not 0.0 <= missing_image_fraction <= 1.0:
        raise ValueError(f"missing_image_fraction must be in [0, 1], got {missing_image_fraction}")
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # Hidden per-modality scores, each (N,) standard normal.
    image_scores = rng.standard_normal(n_products)
    text_scores = rng.standard_normal(n_products)
    attribute_scores = rng.standard_normal(n_products)

    # Attributes: the category moves the label and the price, and the price also follows its own score.
    category_index = rng.integers(0, len(CATEGORIES), size=n_products)
    categories = [CATEGORIES[index] for index in category_index]
    log_prices = np.array([category.log_price for category in categories])
    log_prices += 0.5 * attribute_scores + rng.normal(0.0, 0.1, size=n_products)
    prices = np.round(np.exp(log_prices), 2)
    warranty_years = np.clip(np.round(2.0 + 1.2 * attribute_scores + rng.normal(0.0, 1.0, n_products)), 0, 5)
    weights_kg = np.round(rng.lognormal(mean=0.0, sigma=0.6, size=n_products), 2)

    standardised_price = (log_prices - log_prices.mean()) / max(float(log_prices.std()), 1e-6)
    category_effects = np.array([category.effect for category in categories])
    labels = (
        3.0
        + 0.45 * image_scores
        + 0.45 * text_scores
        + category_effects
        + 0.35 * standardised_price
        + 0.1 * (warranty_years - 2.0)
        + rng.normal(0.0, 0.2, size=n_products)
    )

    rows = []
    for index in range(n_products):
        product_id = f"S{index:05d}"
        title, description = _texts(rng, categories[index], float(text_scores[index]))
        image_name = f"images/{product_id}.png"
        if rng.random() >= missing_image_fraction:
            image = _draw_product(rng, float(image_scores[index]))
            image.save(out_dir / image_name, format="PNG")
        rows.append(
            {
                "product_id": product_id,
                "title": title,
                "description": description,
                "category": categories[index].name,
                "brand": BRANDS[rng.integers(len(BRANDS))] if rng.random() >= 0.15 else "",
                "price_usd": f"{prices[index]:.2f}" if rng.random() >= 0.08 else "",
                "weight_kg": f"{weights_kg[index]:.2f}",
                "warranty_years": int(warranty_years[index]),
                "quality_score": f"{labels[index]:.4f}",
                # Customers who rated the product: a sample weight, not known for a new listing.
                "review_count": int(rng.integers(5, 500)),
                # A label leak on purpose, so a spec must exclude it: returns follow the quality.
                "return_rate": f"{np.clip(0.25 - 0.05 * labels[index] + rng.normal(0, 0.01), 0, 1):.4f}",
                "image_path": image_name,
            }
        )

    pd.DataFrame(rows).to_csv(out_dir / "products.csv", index=False)
    logger.info("wrote a sample catalogue of %d products to %s", n_products, out_dir)
    return out_dir


def _texts(rng: np.random.Generator, category: _Category, text_score: float) -> tuple[str, str]:
    """Build (title, description), with the adjective and quality sentence picked by the text score."""
    adjective = ADJECTIVES[_pick_by_score(rng, text_score, len(ADJECTIVES))]
    material = MATERIALS[rng.integers(len(MATERIALS))]
    noun = category.nouns[rng.integers(len(category.nouns))]
    title = f"{adjective.capitalize()} {material} {noun}"

    quality_sentence = QUALITY_SENTENCES[_pick_by_score(rng, text_score, len(QUALITY_SENTENCES))]
    fillers = rng.choice(len(FILLER_SENTENCES), size=2, replace=False)
    description = " ".join(
        [f"A {material} {noun} for everyday use.", quality_sentence, *(FILLER_SENTENCES[i] for i in fillers)]
    )
    return title, description


def _pick_by_score(rng: np.random.Generator, score: float, count: int) -> int:
    """Map a standard normal score, with a little noise, to one of `count` ordered choices."""
    # The normal CDF turns the score into a quantile, so every choice is about equally common.
    quantile = 0.5 * (1.0 + math.erf((score + rng.normal(0.0, 0.3)) / math.sqrt(2.0)))
    return min(count - 1, int(quantile * count))


def _draw_product(rng: np.random.Generator, image_score: float) -> Image.Image:
    """Draw one product: a shape of random hue whose brightness, saturation and scratches follow the score."""
    background = int(rng.integers(215, 245))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (background, background, background))
    draw = ImageDraw.Draw(image)

    hue = float(rng.random())
    saturation = float(np.clip(0.55 + 0.2 * image_score, 0.1, 1.0))
    value = float(np.clip(0.6 + 0.2 * image_score, 0.12, 1.0))
    fill = tuple(int(round(255 * channel)) for channel in colorsys.hsv_to_rgb(hue, saturation, value))
    outline = tuple(channel // 2 for channel in fill)

    margin = int(rng.integers(8, 20))
    box = (margin, margin, IMAGE_SIZE - margin, IMAGE_SIZE - margin)
    shape = SHAPES[rng.integers(len(SHAPES))]
    if shape == "ellipse":
        draw.ellipse(box, fill=fill, outline=outline, width=2)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill, outline=outline, width=2)
    elif shape == "triangle":
        draw.polygon(
            [(box[0], box[3]), (IMAGE_SIZE // 2, box[1]), (box[2], box[3])], fill=fill, outline=outline
        )
    else:
        middle = IMAGE_SIZE // 2
        draw.polygon(
            [(middle, box[1]), (box[2], middle), (middle, box[3]), (box[0], middle)],
            fill=fill,
            outline=outline,
        )

    # Dark scratches: about 3 more per unit of score below 0.5, so none on most good products.
    scratches = max(0, int(round(3.0 * (0.5 - image_score) + rng.normal(0.0, 0.5))))
    for _ in range(scratches):
        start = tuple(int(coordinate) for coordinate in rng.integers(margin, IMAGE_SIZE - margin, size=2))
        end = tuple(int(coordinate) for coordinate in rng.integers(margin, IMAGE_SIZE - margin, size=2))
        draw.line([start, end], fill=(40, 35, 30), width=2)
    return image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write products.csv and images/ into")
    parser.add_argument("--products", type=int, default=400, help="number of products (default 400)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed (the same seed writes the same files)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate_sample_catalogue(args.out_dir, n_products=args.products, seed=args.seed)


if __name__ == "__main__":
    main()
