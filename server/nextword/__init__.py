"""nextword: next-word prediction for people who write, in any editor."""

from nextword.predict.predictor import Predictor, Suggestion

__all__ = ["Predictor", "Suggestion"]
__version__ = "0.1.0"
