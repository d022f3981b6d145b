"""The HTTP API and the clinician's web page: `create_app(model_dir, cohort_dir, ...)`, run by `biomm serve`."""
from biomm.serve.app import create_app

__all__ = ["create_app"]
