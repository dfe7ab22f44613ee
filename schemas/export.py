"""Write the JSON Schemas of the pydantic models next to them: `python -m schemas.export`."""
import json
from pathlib import Path

from .matrix import Matrix
from .port import PortManifest
from .results import Suite

HERE = Path(__file__).parent
SCHEMAS = {"port.schema.json": PortManifest, "matrix.schema.json": Matrix, "results.schema.json": Suite}


def render(model) -> str:
    return json.dumps(model.model_json_schema(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    for name, model in SCHEMAS.items():
        (HERE / name).write_text(render(model))
        print(HERE / name)
