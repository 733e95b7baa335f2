"""gRPC services of the product-quality system: image encoder, text encoder and fusion predictor."""
