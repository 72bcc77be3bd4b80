"""Entity extraction against the reference corpus and rule by rule."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from runner.extraction import find
from runner.extraction.find import FoundMention, extract_from_text, locate, order_mentions
from runner.extraction.polish import polish
from runner.extraction.resolve import Catalog, CatalogEntry, candidate_keys, matching_key

FIXTURES = Path(__file__).parent / "fixtures"


def _read_entity_names() -> list[tuple[str, str]]:
    with (FIXTURES / "entity_names.tsv").open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [(raw, canonical) for raw, canonical in rows]


def _read_answers() -> list[dict[str, Any]]:
    with (FIXTURES / "answers.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


ENTITY_NAMES = _read_entity_names()
ANSWERS = _read_answers()
# Labels the catalog text alone cannot reproduce, with the set precision the fallback must keep.
# pw-1: "free and seamless if everyone is on Apple devices" names Apple, a catalog brand (from
# headphones-1), but the labeller counted only "Apple Passwords" there. Text-only extraction
# reports Apple as a 7th brand, so precision is 6/7; recall and the labels' order stay exact.
TEXT_ONLY_PRECISION = {"pw-1": 6 / 7}


def _build_catalog() -> Catalog:
    """Every canonical name in entity_names.tsv and every answer label; TransferWise -> Wise."""
    labels = [name for answer in ANSWERS for name in answer["mentions"]]
    names = dict.fromkeys([canonical for _, canonical in ENTITY_NAMES] + labels)
    return Catalog(
        CatalogEntry(entity_id, name, ("TransferWise",) if name == "Wise" else ())
        for entity_id, name in enumerate(names, start=1)
    )


CATALOG = _build_catalog()


def _entity_id(name: str) -> int:
    entry = CATALOG.resolve(name)
    assert entry is not None
    return entry.entity_id


def _names(mentions: list[FoundMention]) -> list[str]:
    return [mention.display for mention in mentions]


# --- corpus -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "canonical"), ENTITY_NAMES, ids=[raw for raw, _ in ENTITY_NAMES])
def test_raw_name_resolves_to_canonical(raw: str, canonical: str) -> None:
    entry = CATALOG.resolve(raw)
    assert entry is not None
    assert entry.name == canonical


@pytest.mark.parametrize("answer", ANSWERS, ids=[answer["id"] for answer in ANSWERS])
def test_text_extraction_matches_labels(answer: dict[str, Any]) -> None:
    labels: list[str] = answer["mentions"]
    found = _names(extract_from_text(answer["answer"], CATALOG))
    bound = TEXT_ONLY_PRECISION.get(answer["id"])
    if bound is None:
        assert found == labels
        return
    correct = set(found) & set(labels)
    assert len(correct) / len(found) >= bound
    assert correct == set(labels)
    assert [name for name in found if name in labels] == labels


@pytest.mark.parametrize("answer", ANSWERS, ids=[answer["id"] for answer in ANSWERS])
def test_structured_mentions_follow_the_text(answer: dict[str, Any]) -> None:
    text: str = answer["answer"]
    mentions = order_mentions(text, answer["mentions"], CATALOG)
    assert _names(mentions) == answer["mentions"]
    assert [m.position for m in mentions] == list(range(1, len(mentions) + 1))
    for mention in mentions:
        assert text[mention.char_offset :].startswith(mention.raw_name)
        entry = CATALOG.resolve(mention.raw_name)
        assert entry is not None
        assert entry.entity_id == mention.entity_id


def test_corpus_has_every_kind_of_answer() -> None:
    # Guards the parametrized tests above against a truncated fixture.
    assert len(ANSWERS) == 12
    assert any(answer["mentions"] == [] for answer in ANSWERS)


# --- polish -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("**HubSpot CRM**", "HubSpot CRM"),
        ("__Zendesk__", "Zendesk"),
        ("*Asana*", "Asana"),
        ("`Render`", "Render"),
        ("snake_case", "snake_case"),
        ('"Salesforce Sales Cloud"', "Salesforce Sales Cloud"),
        ("“Wise”", "Wise"),
        ("'Trello'", "Trello"),
        ("  Pipedrive.", "Pipedrive"),
        ("Pipedrive!?", "Pipedrive"),
        ("Yahoo!", "Yahoo"),
        ("HubSpot, Inc.", "HubSpot"),
        ("Acme Inc", "Acme"),
        ("Acme, LLC", "Acme"),
        ("Acme Ltd.", "Acme"),
        ("Western Union Co.", "Western Union"),
        ("Acme Corp.", "Acme"),
        ("Acme Corporation", "Acme"),
        ("Acme GmbH", "Acme"),
        ("Nestlé S.A.", "Nestlé"),
        ("Acme SA", "Acme"),
        ("Acme AG", "Acme"),
        ("Acme plc", "Acme"),
        ("Acme PLC", "Acme"),
        ("Acme N.V.", "Acme"),
        ("Acme B.V.", "Acme"),
        ("Acme S.p.A.", "Acme"),
        ("AT&T Inc.", "AT&T"),
        ("HubSpot™", "HubSpot"),
        ("Acme®", "Acme"),
        ("Acme ©", "Acme"),
        ("Acme(TM)", "Acme"),
        ("Acme (R)", "Acme"),
        ("Sony's XM5", "Sony XM5"),
        ("Sony\u2019s XM5", "Sony XM5"),
        ("Brooks'", "Brooks"),
        ("Trello (by Atlassian)", "Trello"),
        ("Wise (formerly TransferWise).", "Wise"),
        ("Xoom, a PayPal service", "Xoom"),
        ("[HubSpot](https://hubspot.com)", "HubSpot"),
        ("  HubSpot \n  CRM ", "HubSpot CRM"),
        ("Re:amaze", "Re:amaze"),
        ("Fly.io", "Fly.io"),
        ("monday.com", "monday.com"),
    ],
)
def test_polish(raw: str, display: str) -> None:
    assert polish(raw) == display


@pytest.mark.parametrize("raw", ["", "   ", "**", "!!!", "—", "()"])
def test_polish_of_punctuation_only_is_empty(raw: str) -> None:
    assert polish(raw) == ""


@pytest.mark.parametrize("raw", [raw for raw, _ in ENTITY_NAMES])
def test_polish_is_idempotent(raw: str) -> None:
    assert polish(polish(raw)) == polish(raw)


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("display", "key"),
    [
        ("HubSpot", "hubspot"),
        ("Salesforce.com", "salesforce"),
        ("monday.com", "monday"),
        ("AT&T", "att"),
        ("Re:amaze", "reamaze"),
        ("Fly.io", "flyio"),
        ("Proton VPN", "protonvpn"),
        ("ProtonVPN", "protonvpn"),
        ("Škoda", "skoda"),
        ("Nestlé", "nestle"),
        ("\uff2e\uff4f\uff52\uff44VPN", "nordvpn"),  # fullwidth "Nord"
        ("Straße", "strasse"),
        ("1Password", "1password"),
        ("...", ""),
    ],
)
def test_matching_key(display: str, key: str) -> None:
    assert matching_key(display) == key


@pytest.mark.parametrize(
    ("display", "keys"),
    [
        ("Brooks Ghost 16", ["brooksghost16", "brooksghost", "brooks"]),
        ("Salesforce Sales Cloud", ["salesforcesalescloud", "salesforcesales", "salesforce"]),
        ("**Sony's XM5**", ["sonyxm5", "sony"]),
        ("Proton VPN", ["protonvpn", "proton"]),
        ("Fly.io", ["flyio"]),
        ("Acme & Co", ["acmeco", "acme"]),
        ("", []),
    ],
)
def test_candidate_keys(display: str, keys: list[str]) -> None:
    assert candidate_keys(display) == tuple(keys)


# --- catalog ------------------------------------------------------------------------------------


def test_catalog_matches_at_word_boundaries_only() -> None:
    catalog = Catalog([CatalogEntry(1, "Sage")])
    assert catalog.resolve("Sagebrush Analytics") is None
    entry = catalog.resolve("Sage Business Cloud")
    assert entry is not None
    assert entry.entity_id == 1


def test_catalog_resolves_aliases_and_counts_entries() -> None:
    catalog = Catalog([CatalogEntry(7, "Wise", ("TransferWise",)), CatalogEntry(8, "Xoom")])
    assert len(catalog) == 2
    assert catalog.resolve("**TransferWise**") == CatalogEntry(7, "Wise", ("TransferWise",))
    assert catalog.resolve("Remitly") is None


def test_alias_never_shadows_another_brand_name() -> None:
    catalog = Catalog([CatalogEntry(1, "Acme", ("Zen",)), CatalogEntry(2, "Zen")])
    entry = catalog.resolve("Zen")
    assert entry is not None
    assert entry.entity_id == 2


# --- locate -------------------------------------------------------------------------------------


def test_locate_is_whole_word() -> None:
    assert locate("Read the message first.", ["Sage"]) is None
    assert locate("Read the message from Sage.", ["Sage"]) == 22


def test_locate_folds_accents_and_keeps_offsets() -> None:
    text = "In Europe, the Straße test favoured the Škoda Enyaq."
    offset = locate(text, ["Skoda"])
    assert offset == text.index("Škoda")
    assert locate(text, ["SKODA ENYAQ"]) == offset


def test_locate_returns_earliest_of_any_name() -> None:
    text = "TransferWise, now Wise, and Xoom."
    assert locate(text, ["Xoom", "TransferWise"]) == 0
    assert locate(text, ["Xoom", "Wise"]) == text.index(" Wise") + 1
    assert locate(text, ["Remitly"]) is None
    assert locate(text, []) is None


def test_locate_finds_spacing_variants_and_punctuated_names() -> None:
    assert locate("Try ProtonVPN today", ["Proton VPN"]) == 4
    assert locate("Ask Yahoo! first", ["Yahoo!"]) == 4
    assert locate("Use Re:amaze.", ["re:amaze"]) == 4


# --- mentions -----------------------------------------------------------------------------------


def test_refusal_has_no_mentions() -> None:
    refusal = next(answer["answer"] for answer in ANSWERS if answer["id"] == "refusal-1")
    assert extract_from_text(refusal, CATALOG) == []
    assert order_mentions(refusal, ["Delta", "Ryanair"], CATALOG) == []


def test_mention_not_in_text_is_dropped() -> None:
    text = "Pipedrive is simple; HubSpot is free."
    mentions = order_mentions(text, ["HubSpot", "Salesforce", "Pipedrive"], CATALOG)
    assert _names(mentions) == ["Pipedrive", "HubSpot"]
    assert [m.char_offset for m in mentions] == [0, text.index("HubSpot")]
    assert [m.position for m in mentions] == [1, 2]


def test_each_entity_is_mentioned_once() -> None:
    text = "**Sony WH-1000XM5** first; Sony's XM5 again; then Hubspot."
    mentions = order_mentions(text, ["Sony's XM5", "Sony WH-1000XM5", "HubSpot CRM"], CATALOG)
    assert mentions == [
        FoundMention("Sony", "Sony", "sony", _entity_id("Sony"), 2, 1),
        FoundMention("Hubspot", "HubSpot", "hubspot", _entity_id("HubSpot"), 50, 2),
    ]


def test_new_entity_is_keyed_by_its_polished_name() -> None:
    text = "We liked **Acme Rocket** and Pipedrive."
    mentions = order_mentions(text, ["Acme Rocket, Inc."], CATALOG)
    assert mentions == [FoundMention("Acme Rocket", "Acme Rocket", "acmerocket", None, 11, 1)]


def test_new_entity_falls_back_to_its_longest_leading_words() -> None:
    text = "Acme makes the Acme Rocket; the Rocket 3 is its best."
    mentions = order_mentions(text, ["Acme Rocket 3"], CATALOG)
    assert [(m.display, m.raw_name, m.char_offset) for m in mentions] == [
        ("Acme Rocket 3", "Acme Rocket", text.index("Acme Rocket")),
    ]


def test_full_name_beats_an_earlier_leading_word() -> None:
    text = "Need help? Help Desk Pro answers in minutes."
    mentions = order_mentions(text, ["Help Desk Pro"], CATALOG)
    assert [(m.raw_name, m.char_offset) for m in mentions] == [("Help Desk Pro", 11)]


def test_text_extraction_gives_overlapping_names_to_the_longest() -> None:
    text = "Apple Passwords is built in; Apple also sells AirPods."
    mentions = extract_from_text(text, CATALOG)
    assert [(m.display, m.raw_name, m.char_offset) for m in mentions] == [
        ("Apple Passwords", "Apple Passwords", 0),
        ("Apple", "Apple", text.index("Apple also")),
    ]


def test_text_extraction_orders_by_first_appearance() -> None:
    text = "Compare Wise (formerly TransferWise) with Xoom; Wise wins."
    mentions = extract_from_text(text, CATALOG)
    assert [(m.display, m.char_offset, m.position) for m in mentions] == [
        ("Wise", 8, 1),
        ("Xoom", text.index("Xoom"), 2),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Salesforce, HubSpot & Zoho CRM: 3 picks!",
        "Škoda Octavia",
        "\u201cProton VPN\u201d vs NordVPN",
        "Straße ǅemal ﬁle",
    ],
)
def test_fold_keeps_length_and_matches_char_by_char(text: str) -> None:
    """The ASCII fast path and the cached per-char path fold alike, one char for one char."""
    folded = find._fold(text)
    assert len(folded) == len(text)
    assert folded == "".join(find._fold_char(ch) for ch in text)
