"""Property: any beacon sequence gives the product states of an obviously-correct reference model.

The model keeps every event and recomputes a product's state from scratch: the actions since its last
purchase, each withdrawn by a later removal of its own kind; the state is the highest-priority one left.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kagoflow.core.behaviour import MemberState, apply_beacon
from kagoflow.core.events import Beacon

PRODUCTS = ("A", "B", "C")
KINDS = ("view", "cart_add", "cart_remove", "favorite_add", "favorite_remove", "purchase", "page_view")

event = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from(PRODUCTS),
    st.lists(st.sampled_from(PRODUCTS), max_size=2, unique=True),
)


def reference_states(events: list[tuple[str, str, list[str]]]) -> dict[str, str | None]:
    """Replay ``events`` on plain sets of actions in force per product."""
    in_force: dict[str, set[str]] = {p: set() for p in PRODUCTS}
    for kind, pid, bought in events:
        if kind == "purchase":
            for target in bought or [p for p in PRODUCTS if "cart" in in_force[p]]:
                in_force[target].clear()
        elif kind in ("view", "cart_add", "favorite_add"):
            in_force[pid].add(kind.removesuffix("_add"))
        elif kind in ("cart_remove", "favorite_remove"):
            in_force[pid].discard(kind.removesuffix("_remove"))
    return {
        p: next((s for s in ("cart", "favorite", "view") if s in actions), None)
        for p, actions in in_force.items()
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=40))
def test_product_states_match_the_reference_model(events: list[tuple[str, str, list[str]]]) -> None:
    state = MemberState("m1")
    for index, (kind, pid, bought) in enumerate(events):
        apply_beacon(
            state,
            Beacon(
                event_id=f"e{index}",
                member_id="m1",
                type=kind,
                ts=1_700_000_000_000 + index * 1000,  # type: ignore[arg-type]
                product_id=None if kind in ("purchase", "page_view") else pid,
                product_ids=tuple(bought) if kind == "purchase" else (),
            ),
        )
        expected = reference_states(events[: index + 1])
        assert {p: state.product_state(p) for p in PRODUCTS} == expected
    assert set(state.products) == {p for p, s in reference_states(events).items() if s is not None}


def reference_anchors(events: list[tuple[str, str, list[str]]]) -> dict[str, int | None]:
    """``clock: action`` anchor per trigger: the latest add of that type after which the product's state was
    that type, over products whose state is that type now (a withdrawal or purchase forgets the action)."""
    in_force: dict[str, set[str]] = {p: set() for p in PRODUCTS}
    concerned: dict[str, dict[str, int]] = {p: {} for p in PRODUCTS}

    def state_of(p: str) -> str | None:
        return next((s for s in ("cart", "favorite", "view") if s in in_force[p]), None)

    for index, (kind, pid, bought) in enumerate(events):
        ts = 1_700_000_000_000 + index * 1000
        if kind == "purchase":
            for target in bought or [p for p in PRODUCTS if "cart" in in_force[p]]:
                in_force[target].clear()
                concerned[target].clear()
        elif kind in ("view", "cart_add", "favorite_add"):
            action = kind.removesuffix("_add")
            in_force[pid].add(action)
            if state_of(pid) == action:
                concerned[pid][action] = ts
        elif kind in ("cart_remove", "favorite_remove"):
            action = kind.removesuffix("_remove")
            in_force[pid].discard(action)
            concerned[pid].pop(action, None)
    return {
        trigger: max(
            (concerned[p][trigger] for p in PRODUCTS if state_of(p) == trigger and trigger in concerned[p]),
            default=None,
        )
        for trigger in ("cart", "favorite", "view")
    }


@settings(max_examples=200, deadline=None)
@given(st.lists(event, max_size=30))
def test_action_anchors_match_the_reference_model(events: list[tuple[str, str, list[str]]]) -> None:
    from kagoflow.core.abandonment import anchor

    from .abandon_helpers import rule, ruleset

    rules = {
        r.trigger: r for r in ruleset(rule("c", "cart"), rule("f", "favorite"), rule("v", "view")).abandonment
    }
    state = MemberState("m1")
    for index, (kind, pid, bought) in enumerate(events):
        apply_beacon(
            state,
            Beacon(
                event_id=f"e{index}",
                member_id="m1",
                type=kind,
                ts=1_700_000_000_000 + index * 1000,  # type: ignore[arg-type]
                product_id=None if kind in ("purchase", "page_view") else pid,
                product_ids=tuple(bought) if kind == "purchase" else (),
            ),
        )
    assert {t: anchor(state, r) for t, r in rules.items()} == reference_anchors(events)
