"""Write the API's OpenAPI document: `python -m biomm.serve.openapi [schemas/openapi.json]`."""
from __future__ import annotations

import sys

from biomm.serve.app import write_openapi

if __name__ == "__main__":
    print(write_openapi(sys.argv[1] if len(sys.argv) > 1 else "schemas/openapi.json"))
