"""Benchmark the predictor's cold path, stage by stage (benchmark 5 of docs/benchmarks.md).

Clients send a product's image, title and attributes inline with no product id, so nothing is read
from the store: the predictor calls the image and text encoder services (in parallel) and runs the
fusion model. The same products are also timed stage by stage: in this process (decoding,
image embedding, text embedding, fusion prediction, each for one product) and as direct calls to
each encoder service. Rounds alternate the parts, one client at a time.

    .venv/bin/python benchmarks/predictor_cold.py [--run runs/bench-sample] [--products 64]

The products come from `--catalogue` (default: the board games); the model from `--run`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from benchmarks._common import default_catalogue, describe_machine, load_products, median, print_table
from benchmarks._predictor import DEFAULT_RUN, ensure_run
from encoders.image import decode_image, load_image_encoder
from encoders.text import load_text_encoder
from fusion.loading import load_predictor
from fusion.predictions import FusionInputs
from pq.v1 import image_encoder_pb2, image_encoder_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.fusion_predictor.server import feature_schema_of
from training.scoring import attribute_values
from training.stack import start_stack, stop_stack

MAX_PIXELS = 40_000_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, default=DEFAULT_RUN, help="main-job run folder (default: %(default)s)"
    )
    parser.add_argument(
        "--catalogue", type=Path, default=default_catalogue(), help="catalogue folder (default: %(default)s)"
    )
    parser.add_argument(
        "--products", type=int, default=64, help="products per measurement (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds; cells are medians (default: %(default)s)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra setting for every service"
    )
    return parser.parse_args(argv)


def _per_call_ms(action: Callable[[int], object], count: int) -> list[float]:
    """Run action(i) for each i and return each call's milliseconds."""
    times = []
    for index in range(count):
        started = time.perf_counter()
        action(index)
        times.append(1000 * (time.perf_counter() - started))
    return times


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = ensure_run(args.run.resolve())
    products, source = load_products(args.catalogue, args.products)

    model = load_predictor(Path(run.environment["PQ_PREDICTOR_MODEL_PATH"]))
    schema = feature_schema_of(model)
    image_encoder = load_image_encoder(device="cpu")
    text_encoder = load_text_encoder(device="cpu")
    if (image_encoder.model_id, text_encoder.model_id) != (schema.image_model_id, schema.text_model_id):
        raise SystemExit("the run's model was trained on other encoder versions than the default ones")
    # The model's attributes, by name, from each product; those the model does not know are left out.
    attribute_rows = [
        {name: product.attributes.get(name) for name in schema.attribute_names} for product in products
    ]
    contents = []
    for product, row in zip(products, attribute_rows, strict=True):
        content = predictor_pb2.ProductContent(title=product.text, image=product.image or b"")
        for name, value in attribute_values(row).items():
            content.attributes[name].CopyFrom(value)
        contents.append(content)

    decoded = [decode_image(product.image or b"", max_pixels=MAX_PIXELS) for product in products]
    image_vectors = image_encoder.embed(decoded[:1])
    text_vectors = text_encoder.embed([products[0].text]).vectors

    def fusion(index: int) -> None:
        inputs = FusionInputs.from_optional(
            [image_vectors[0]],
            [text_vectors[0]],
            [attribute_rows[index]],
            image_dim=schema.image_embedding_dim,
            text_dim=schema.text_embedding_dim,
        )
        model.predict(inputs)

    in_process = {
        "decode image": lambda i: decode_image(products[i].image or b"", max_pixels=MAX_PIXELS),
        "embed image (preprocess + forward, batch 1)": lambda i: image_encoder.embed([decoded[i]]),
        "embed text (tokenize + forward, batch 1)": lambda i: text_encoder.embed([products[i].text]),
        "fusion prediction with contributions": fusion,
    }

    environment = {
        **run.environment,
        "PQ_PREDICTOR_WRITE_BACK": "false",
        "PQ_IMAGE_ENCODER_DEVICE": "cpu",
        "PQ_TEXT_ENCODER_DEVICE": "cpu",
        "PQ_PREDICTOR_DEVICE": "cpu",
    }
    environment.update(pair.split("=", 1) for pair in args.env)
    print(f"# predictor cold path: {len(products)} products from {source}; model {model.model_version}")
    print(f"# machine: {describe_machine()}")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pq-bench-") as log_dir:
        stack = start_stack(Path(log_dir), environment)
        try:
            channels = [grpc.insecure_channel(service.address) for service in stack.services]
            image_stub = image_encoder_pb2_grpc.ImageEncoderServiceStub(channels[0])
            text_stub = text_encoder_pb2_grpc.TextEncoderServiceStub(channels[1])
            predictor_stub = predictor_grpc.QualityPredictorServiceStub(channels[2])
            over_grpc = {
                "image encoder call (1 image)": lambda i: image_stub.EmbedImages(
                    image_encoder_pb2.EmbedImagesRequest(images=[products[i].image]), timeout=60
                ),
                "text encoder call (1 text)": lambda i: text_stub.EmbedTexts(
                    text_encoder_pb2.EmbedTextsRequest(texts=[products[i].text]), timeout=60
                ),
                "predictor call, inline content": lambda i: predictor_stub.PredictQuality(
                    predictor_pb2.PredictQualityRequest(content=contents[i]), timeout=60
                ),
            }
            for action in [*in_process.values(), *over_grpc.values()]:
                action(0)  # warm-up
            for _ in range(args.rounds):
                for name, action in [*in_process.items(), *over_grpc.items()]:
                    results.setdefault(name, []).extend(_per_call_ms(action, len(products)))
            for channel in channels:
                channel.close()
        finally:
            stop_stack(stack)

    rows = [
        (name, round(median(times), 2), round(sorted(times)[int(0.99 * (len(times) - 1))], 2))
        for name, times in results.items()
    ]
    print(f"# one client; per-call milliseconds over {args.rounds} rounds of {len(products)} products")
    print_table(["stage", "p50 ms", "p99 ms"], rows)
    p50 = {name: median(times) for name, times in results.items()}
    image_ms = p50["image encoder call (1 image)"]
    text_ms = p50["text encoder call (1 text)"]
    call_ms = p50["predictor call, inline content"] - p50["fusion prediction with contributions"]
    # The predictor calls both encoders at once. On few cores they share the CPU, so the call costs
    # between the slower encoder call and the sum of both.
    print(
        f"# predictor call p50 minus the fusion prediction: {call_ms:.2f} ms; the encoder calls alone take "
        f"{max(image_ms, text_ms):.2f} ms (slower one) to {image_ms + text_ms:.2f} ms (both in turn)"
    )


if __name__ == "__main__":
    main()
