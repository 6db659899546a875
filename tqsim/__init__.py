"""tqsim: latency and tail quality of deep-learning inference under a deadline."""

import warnings as _warnings

__version__ = "0.2.0"

# ArviZ announces its coming refactor on every import; tqsim pins arviz < 1.0, so the notice is noise
_warnings.filterwarnings("ignore", message="ArviZ is undergoing a major refactor", category=FutureWarning)
