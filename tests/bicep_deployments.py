"""Every nested deployment a Bicep template starts, following local modules down.

ARM runs nested deployments by name per scope: a module deployment named like another one
in the same resource group, even from another file, replaces it while it runs
(`DeploymentActive`). Bicep only checks names within one file, so this walks every local
module reference from `main.bicep` down and resolves each deployment's name and scope.

Names are resolved where the text allows: a string literal, or an interpolation of
`deployment().name` (the parent deployment's name). Other expressions stay as written and
are only compared with the same expression from the same file. Registry modules (Azure
Verified Modules) are leaves: their own nested deployments are named from
`uniqueString(deployment().name, ...)` by the AVM specification.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

_MODULE = re.compile(r"^module\s+(\w+)\s+'([^']+)'\s*=\s*", re.MULTILINE)
_PROPERTY = re.compile(r"^\s*(name|scope)\s*:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Deployment:
    name: str
    scope: str
    declared_in: str  # file:symbol chain, for the error message

    @property
    def resolved(self) -> bool:
        return not self.name.startswith("<")


def _skip_string(text: str, i: int) -> int:
    """Index after the string literal starting at `i` (a quote)."""
    if text.startswith("'''", i):
        end = text.find("'''", i + 3)
        return len(text) if end < 0 else end + 3
    i += 1
    depth = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if ch == "}" and depth:
            depth -= 1
        elif ch == "'" and not depth:
            return i + 1
        i += 1
    return i


def _block(text: str, start: int) -> str:
    """The `{...}` body that opens at or after `start`, strings and comments skipped."""
    i = text.index("{", start)
    depth = 0
    body_start = i
    while i < len(text):
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        if text.startswith("/*", i):
            i = text.find("*/", i) + 2
            continue
        ch = text[i]
        if ch == "'":
            i = _skip_string(text, i)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[body_start + 1 : i]
        i += 1
    raise ValueError("unbalanced braces")


def _top_level_properties(body: str) -> dict[str, str]:
    """`name:` and `scope:` at the first level of a module body."""
    found: dict[str, str] = {}
    depth = 0
    for line in body.splitlines():
        match = _PROPERTY.match(line)
        if depth == 0 and match and match.group(1) not in found:
            found[match.group(1)] = match.group(2)
        stripped = re.sub(r"'[^']*'", "''", line.split("//")[0])
        depth += stripped.count("{") + stripped.count("[") - stripped.count("}")
        depth -= stripped.count("]")
    return found


def _resolve_name(expression: str, parent_name: str, where: str) -> str:
    if expression.startswith("'") and expression.endswith("'"):
        literal = expression[1:-1]
        literal = literal.replace("${deployment().name}", parent_name)
        if "${" not in literal:
            return literal
    return f"<{where}: {expression}>"


def deployments(
    template: Path, *, parent_name: str = "<top>", scope: str = "", chain: str = ""
) -> list[Deployment]:
    """Every module deployment `template` starts, and theirs, with resolved names and scopes."""
    text = template.read_text()
    found: list[Deployment] = []
    for match in _MODULE.finditer(text):
        symbol, path = match.groups()
        where = f"{chain}{template.name}:{symbol}"
        properties = _top_level_properties(_block(text, match.end()))
        name = _resolve_name(properties.get("name", "<no name>"), parent_name, template.name)
        module_scope = properties.get("scope")
        # Without a scope, or with the current resource group, a module deploys where its
        # parent does.
        target = scope if module_scope in (None, "resourceGroup()") else module_scope
        found.append(Deployment(name, target, where))
        if path.startswith(("br:", "br/", "ts:", "ts/")):
            continue  # a registry module: a leaf here
        child = (template.parent / path).resolve()
        found += deployments(child, parent_name=name, scope=target, chain=f"{where} > ")
    return found


def clashes(template: Path) -> dict[tuple[str, str], list[str]]:
    """(scope, name) -> the modules that deploy under it, wherever there are several."""
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for deployment in deployments(template):
        by_key[(deployment.scope, deployment.name)].append(deployment.declared_in)
    return {key: where for key, where in by_key.items() if len(where) > 1}
