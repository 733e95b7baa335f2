"""Run the text encoder service: `python -m services.text_encoder` (settings from PQ_TEXT_ENCODER_*)."""

from services.text_encoder.servicer import serve

if __name__ == "__main__":
    serve()
