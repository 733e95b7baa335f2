"""Run the image encoder service: `python -m services.image_encoder` (settings from PQ_IMAGE_ENCODER_*)."""

from services.image_encoder.servicer import serve

if __name__ == "__main__":
    serve()
