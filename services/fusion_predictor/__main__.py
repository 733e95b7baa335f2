"""Run the fusion predictor service: `python -m services.fusion_predictor`."""

from services.fusion_predictor.server import serve

if __name__ == "__main__":
    serve()
