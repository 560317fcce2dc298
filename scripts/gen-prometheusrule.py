#!/usr/bin/env python3
"""Writes k8s/base/alerts/prometheusrule.yaml from k8s/base/alerts/rules.yaml (the one source).

    scripts/gen-prometheusrule.py           # rewrite the file
    scripts/gen-prometheusrule.py --check   # exit 1 when the committed file differs

The PrometheusRule's spec is the rules file's content, so Prometheus (through the Operator) and
promtool read the same rules.
"""
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "k8s/base/alerts/rules.yaml"
TARGET = ROOT / "k8s/base/alerts/prometheusrule.yaml"

HEADER = """\
# GENERATED from rules.yaml by scripts/gen-prometheusrule.py: edit rules.yaml, then run it.
# The Prometheus Operator turns this into the rules of the Prometheus that selects it (by default
# kube-prometheus-stack selects `release: <its release>`: add that label in the overlay if so).
"""


class Literal(str):
    pass


def literal(dumper, value):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


yaml.SafeDumper.add_representer(Literal, literal)


def as_literals(node):
    if isinstance(node, dict):
        return {k: as_literals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [as_literals(v) for v in node]
    if isinstance(node, str):
        return Literal(node)
    return node


def render() -> str:
    rules = yaml.safe_load(SOURCE.read_text())
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "automation-engine",
            "labels": {
                "app.kubernetes.io/name": "automation-engine",
                "app.kubernetes.io/part-of": "automation-engine",
                "app.kubernetes.io/component": "alerts",
            },
        },
        "spec": as_literals(rules),
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is not what {SOURCE.relative_to(ROOT)} gives: run scripts/gen-prometheusrule.py")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
