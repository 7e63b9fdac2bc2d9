#!/usr/bin/env python3
"""Extracts every field name the gateway's name-based safety net can meet, from the generated
pydantic models of an `openmetadata-ingestion` wheel, and says which ones are secrets.

Test data for `tests/safety_net_names.rs`: the name policy (`src/rules/names.rs`) must catch every
secret field name and no other scalar field name. Regenerate with:

    pip download --no-deps 'openmetadata-ingestion==2.0.7.0' -d /tmp/om
    python3 rules/extract_field_names.py /tmp/om/openmetadata_ingestion-2.0.7.0-py3-none-any.whl \
        ../shared/data > tests/data/om-2.0.7-field-names.json

The wheel is read as a zip (never installed or imported): each module under
`metadata/generated/schema/` is parsed with `ast`. Models are walked from the subtrees the rule
files name in `safety_net` (the union of every model a `connection.config`, `sourceConfig.config`,
`request.connection.config`, `openMetadataServerConnection` or `authenticationMechanism.config` can
hold, recursively), plus every model of `entity/services/connections/` whether reachable or not.

A field is a *secret* where its annotation is `CustomSecretStr` (OpenMetadata's
`"format": "password"`), which is what the inventory `openmetadata-secret-fields.json` lists; the
script cross-checks the two. A field is *scalar* where it can hold a string, number, boolean (also
enum, `Any`, or a list of these): the safety net only ever flags scalars, and walks into objects.
Map keys (`dict[str, X]`) are chosen by users, not by the schema, so they are not field names.

Standard library only.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = "metadata/generated/schema/"
PKG = "metadata.generated.schema"

# The entity model of each ruled kind (the `kind` of `rules/*.json`) and the subtrees under it
# that the rule file's `safety_net` names (checked against the rule files at run time).
SERVICE_KINDS = [
    "api", "dashboard", "database", "drive", "llm", "mcp", "messaging", "metadata",
    "mlmodel", "pipeline", "search", "security", "storage",
]
ENTITIES = {
    **{
        f"{k}Service": (f"entity.services.{k}Service", f"{k[0].upper()}{k[1:]}Service")
        for k in SERVICE_KINDS
    },
    "ingestionPipeline": ("entity.services.ingestionPipelines.ingestionPipeline", "IngestionPipeline"),
    "workflow": ("entity.automations.workflow", "Workflow"),
    "botUser": ("entity.teams.user", "User"),
}
# Model names that differ from the capitalised kind.
ENTITIES["mlmodelService"] = ("entity.services.mlmodelService", "MlModelService")
ENTITIES["llmService"] = ("entity.services.llmService", "LLMService")

SCALARS = {
    "str", "int", "float", "bool", "bytes", "Any", "AnyUrl", "AnyHttpUrl", "HttpUrl",
    "EmailStr", "UUID", "AwareDatetime", "date", "datetime", "time", "timedelta", "Decimal",
    "CustomSecretStr", "SecretStr", "constr", "conint", "confloat", "Literal",
}
IGNORED = {"None", "Annotated", "Optional", "Union", "List", "list", "Field", "Dict", "dict"}


@dataclass
class Model:
    module: str
    name: str
    kind: str  # "model", "root", "enum"
    bases: list = field(default_factory=list)  # dotted names of the base classes
    fields: list = field(default_factory=list)  # (json name, annotation ast)
    root: ast.AST | None = None

    @property
    def qual(self) -> str:
        return f"{self.module}.{self.name}"


class Index:
    """Every model of the wheel's generated schema package, with its module's imports."""

    def __init__(self, wheel: zipfile.ZipFile):
        self.models: dict[tuple[str, str], Model] = {}
        self.imports: dict[str, dict[str, tuple[str, str | None]]] = {}
        self.modules: set[str] = set()
        sources = {}
        for n in wheel.namelist():
            if n.startswith(SCHEMA) and n.endswith(".py"):
                mod = n[len(SCHEMA):-3].replace("/", ".")
                if mod.endswith("__init__"):
                    mod = mod[: -len(".__init__")] if mod != "__init__" else ""
                self.modules.add(mod)
                sources[mod] = (n.endswith("__init__.py"), wheel.read(n).decode())
        for mod, (is_pkg, src) in sources.items():
            self._parse(mod, is_pkg, ast.parse(src))

    def _parse(self, mod: str, is_pkg: bool, tree: ast.Module) -> None:
        imps: dict[str, tuple[str, str | None]] = {}
        pkg = mod if is_pkg else mod.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    if not (node.module or "").startswith(PKG):
                        continue
                    base = node.module[len(PKG) + 1:]
                else:
                    parts = pkg.split(".") if pkg else []
                    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    # `from .x import y`: y is a module when y.py exists, else a class of x.
                    imps[a.asname or a.name] = (sub, None) if sub in self.modules else (base, a.name)
            elif isinstance(node, ast.ClassDef):
                self._class(mod, node)
        self.imports[mod] = imps

    def _class(self, mod: str, node: ast.ClassDef) -> None:
        bases = [ast.unparse(b) for b in node.bases]
        kind = "enum" if any(b.endswith("Enum") for b in bases) else (
            "root" if any(b.startswith("RootModel") for b in bases) else "model")
        m = Model(mod, node.name, kind, bases)
        for stmt in node.body:
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            name = stmt.target.id
            if name == "model_config":
                continue
            if kind == "root" and name == "root":
                m.root = stmt.annotation
                continue
            m.fields.append((alias_of(stmt) or name, stmt.annotation))
        self.models[(mod, node.name)] = m

    def resolve(self, mod: str, expr: str) -> Model | None:
        """The model a dotted name in module `mod` stands for."""
        head, _, rest = expr.partition(".")
        if not rest:
            if (mod, head) in self.models:
                return self.models[(mod, head)]
            target = self.imports.get(mod, {}).get(head)
            if target and target[1]:
                return self.models.get(target)
            return None
        target = self.imports.get(mod, {}).get(head)
        if target and target[1] is None and "." not in rest:
            return self.models.get((target[0], rest))
        return None


def alias_of(stmt: ast.AnnAssign) -> str | None:
    calls = [n for n in ast.walk(stmt) if isinstance(n, ast.Call) and ast.unparse(n.func) == "Field"]
    for c in calls:
        for kw in c.keywords:
            if kw.arg == "alias" and isinstance(kw.value, ast.Constant):
                return kw.value.value
    return None


def type_names(ann: ast.AST) -> list[tuple[str, bool]]:
    """Dotted type names used in an annotation, each with whether it sits as a map's value."""
    out: list[tuple[str, bool]] = []

    def visit(n: ast.AST, in_map: bool) -> None:
        if isinstance(n, ast.Subscript):
            head = ast.unparse(n.value)
            if head == "Annotated":
                first = n.slice.elts[0] if isinstance(n.slice, ast.Tuple) else n.slice
                visit(first, in_map)
                return
            if head in ("dict", "Dict"):
                args = n.slice.elts if isinstance(n.slice, ast.Tuple) else [n.slice]
                visit(args[-1], True)
                return
            if head in ("Literal",):
                out.append(("Literal", in_map))
                return
            visit(n.value, in_map)
            visit(n.slice, in_map)
        elif isinstance(n, ast.BinOp):
            visit(n.left, in_map)
            visit(n.right, in_map)
        elif isinstance(n, ast.Tuple):
            for e in n.elts:
                visit(e, in_map)
        elif isinstance(n, (ast.Name, ast.Attribute)):
            out.append((ast.unparse(n), in_map))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            visit(ast.parse(n.value, mode="eval").body, in_map)
        elif isinstance(n, ast.Call):
            out.append((ast.unparse(n.func), in_map))

    visit(ann, False)
    return out


class Walker:
    def __init__(self, index: Index):
        self.index = index
        self.seen: set[str] = set()
        # json name -> {"secret": set(models), "plain": set(models), "object": set(models)}
        self.names: dict[str, dict[str, set[str]]] = {}
        self.unresolved: set[str] = set()

    def classify(self, mod: str, ann: ast.AST, depth: int = 0) -> tuple[bool, bool, list[Model]]:
        """(secret, scalar, models) of an annotation, following root models."""
        secret = scalar = False
        models: list[Model] = []
        for name, in_map in type_names(ann):
            if name in IGNORED:
                continue
            if name in SCALARS:
                secret |= name == "CustomSecretStr" and not in_map
                scalar |= not in_map
                continue
            m = self.index.resolve(mod, name)
            if m is None:
                self.unresolved.add(f"{mod}:{name}")
                scalar |= not in_map  # unknown: count as able to hold a scalar
                continue
            if m.kind == "enum":
                scalar |= not in_map
            elif m.kind == "root" and m.root is not None and depth < 20:
                s, sc, ms = self.classify(m.module, m.root, depth + 1)
                secret |= s and not in_map
                scalar |= sc and not in_map
                models += ms
            else:
                models.append(m)
        return secret, scalar, models

    def walk(self, m: Model) -> None:
        if m.qual in self.seen:
            return
        self.seen.add(m.qual)
        if m.kind == "root" and m.root is not None:
            for sub in self.classify(m.module, m.root)[2]:
                self.walk(sub)
            return
        # Inherited fields are recorded under the base model.
        for base in m.bases:
            parent = self.index.resolve(m.module, base)
            if parent is not None:
                self.walk(parent)
        for name, ann in m.fields:
            secret, scalar, models = self.classify(m.module, ann)
            entry = self.names.setdefault(name, {"secret": set(), "plain": set(), "object": set()})
            if secret:
                entry["secret"].add(m.qual)
            elif scalar:
                entry["plain"].add(m.qual)
            else:
                entry["object"].add(m.qual)
            for sub in models:
                self.walk(sub)

    def field_models(self, m: Model, key: str) -> list[Model]:
        """The models a field of `m` can hold (through root models)."""
        for name, ann in m.fields:
            if name == key:
                return self.classify(m.module, ann)[2]
        return []


def subtree_models(walker: Walker, entity: Model, path: list[str]) -> list[Model]:
    level = [entity]
    for key in path:
        level = [sub for m in level for sub in walker.field_models(m, key)]
    return level


def inventory_names(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    names = set()
    for kind, groups in data.items():
        if kind == "_meta":
            continue
        for entries in groups.values():
            for e in entries:
                m = re.search(r"\.([A-Za-z0-9_]+)$", e["path"])
                if not m:
                    raise SystemExit(f"{path}: {e['path']} does not end in a field name")
                names.add(m.group(1))
    return sorted(names)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: extract_field_names.py WHEEL SHARED_DATA_DIR > out.json")
    wheel_path, data_dir = Path(sys.argv[1]), Path(sys.argv[2])
    index = Index(zipfile.ZipFile(wheel_path))
    walker = Walker(index)
    rules_dir = Path(__file__).resolve().parent
    roots = {}
    for kind, (mod, cls) in sorted(ENTITIES.items()):
        entity = index.models.get((mod, cls))
        if entity is None:
            raise SystemExit(f"model {mod}.{cls} not in the wheel")
        rule = json.loads((rules_dir / f"{kind}.json").read_text())
        for net in rule["safety_net"]:
            path = net.removeprefix("$.").split(".")
            models = subtree_models(walker, entity, path)
            if not models:
                raise SystemExit(f"{kind}: {net} leads to no model")
            roots[f"{kind} {net}"] = sorted(m.qual for m in models)
            for m in models:
                walker.walk(m)
    extra = [m for (mod, _), m in sorted(index.models.items())
             if mod.startswith("entity.services.connections.")]
    for m in extra:
        walker.walk(m)

    inv = {
        "2.0.7.0": inventory_names(data_dir / "openmetadata-secret-fields.json"),
        "1.13.6.3": inventory_names(data_dir / "openmetadata-secret-fields-1.13.6.3.json"),
        "1.9.17.6": inventory_names(data_dir / "openmetadata-secret-fields-1.9.17.6.json"),
    }
    model_secret = {n for n, e in walker.names.items() if e["secret"]}
    if model_secret != set(inv["2.0.7.0"]):
        raise SystemExit(
            f"secret names differ from the inventory: only in the models "
            f"{sorted(model_secret - set(inv['2.0.7.0']))}, only in the inventory "
            f"{sorted(set(inv['2.0.7.0']) - model_secret)}"
        )

    def sample(s: set[str]) -> list[str]:
        return sorted(s)[:3]

    fields = {}
    for name in sorted(walker.names, key=lambda n: (n.lower(), n)):
        e = walker.names[name]
        fields[name] = {
            "secret": bool(e["secret"]),
            "scalar": bool(e["secret"] or e["plain"]),
            "secretIn": len(e["secret"]),
            "plainIn": len(e["plain"]),
            "objectIn": len(e["object"]),
            "examples": {k: sample(e[k]) for k in ("secret", "plain", "object") if e[k]},
        }
    out = {
        "_meta": {
            "source": wheel_path.name,
            "sha256": hashlib.sha256(wheel_path.read_bytes()).hexdigest(),
            "generator": "rules/extract_field_names.py",
            "models": len(walker.seen),
            "fieldNames": len(fields),
            "secretNames": sum(1 for f in fields.values() if f["secret"]),
            "semantics": (
                "secret: some model declares the field CustomSecretStr (format password); "
                "scalar: some model lets it hold a string, number, boolean, enum or a list of them; "
                "secretIn/plainIn/objectIn: how many models declare it secret / plain scalar / object-only; "
                "examples: up to three such models of each"
            ),
            "roots": roots,
            "unresolvedTypes": sorted(walker.unresolved),
        },
        "inventorySecretNames": inv,
        "fields": fields,
    }
    # One line per field name, so a regeneration's diff reads name by name.
    head = json.dumps({k: v for k, v in out.items() if k != "fields"}, indent=1)
    lines = [f" {json.dumps(n)}: {json.dumps(f)}" for n, f in fields.items()]
    sys.stdout.write(head[:-2] + ',\n "fields": {\n' + ",\n".join(lines) + "\n }\n}\n")


if __name__ == "__main__":
    main()
