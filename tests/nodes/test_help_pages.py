"""Node help pages (web/docs/<node id>.md, what frontend 1.27's node library shows) and tooltips."""
import pathlib
import re

import pytest

pytestmark = pytest.mark.host

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUMERIC = {"INT", "FLOAT"}
# a number (a range, a default, an example) or a unit the value is counted in
UNIT_OR_RANGE = re.compile(r"\d|\b(px|pixels?|tokens?|MB|steps?|calls?|sigma|percent|fraction|RMS|tiles?)\b", re.I)


def test_the_frontend_looks_for_help_pages_where_sprint_puts_them():
    import comfyui_frontend_package
    bundle = pathlib.Path(comfyui_frontend_package.__file__).parent / "static" / "assets"
    text = "".join(p.read_text(errors="ignore") for p in bundle.glob("*.js"))
    assert "/extensions/${customNodeName}/docs/${node2.name}.md" in text   # served from WEB_DIRECTORY
    assert (ROOT / "web" / "docs").is_dir()


def test_every_node_has_a_help_page_naming_each_input_and_output(host):
    for node_id in host.sprint_nodes():
        schema = host.nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        page = ROOT / "web" / "docs" / f"{node_id}.md"
        assert page.is_file(), f"{node_id} has no help page {page.relative_to(ROOT)}"
        text = page.read_text()
        assert text.startswith(f"# {schema.display_name}\n"), node_id
        for section in ("## Inputs", "## Outputs", "## When to use", "## Limits"):
            assert section in text, f"{node_id}: {section} missing"
        assert schema.description in text, f"{node_id}: the page's summary is not the node's description"
        for inp in schema.inputs:
            row = next((line for line in text.splitlines() if line.startswith(f"| `{inp.id}`")), None)
            assert row is not None, f"{node_id}.{inp.id} not on its help page"
            # the page says what the node says: its tooltip and default (pages drifted from the code once)
            assert inp.tooltip in row, f"{node_id}.{inp.id}: the page's text is not the input's tooltip"
            if getattr(inp, "default", None) is not None:
                assert f"`{inp.default}`" in row, f"{node_id}.{inp.id}: the page's default is not {inp.default}"
        for out in schema.outputs:
            assert f"| {out.io_type} |" in text, f"{node_id} output {out.io_type} not on its help page"
    pages = {p.stem for p in (ROOT / "web" / "docs").glob("*.md")}
    assert pages == set(host.sprint_nodes()), "a help page for a node that does not exist"


def test_every_tooltip_exists_and_numeric_ones_state_a_unit_or_range(host):
    missing = []
    for node_id in host.sprint_nodes():
        schema = host.nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        for inp in schema.inputs:
            if not getattr(inp, "tooltip", None):
                missing.append(f"{node_id}.{inp.id}: no tooltip")
            elif inp.get_io_type() in NUMERIC and not UNIT_OR_RANGE.search(inp.tooltip):
                missing.append(f"{node_id}.{inp.id}: tooltip states no unit or range")
        missing += [f"{node_id} output {out.io_type}: no tooltip" for out in schema.outputs
                    if not getattr(out, "tooltip", None)]
    assert missing == []
