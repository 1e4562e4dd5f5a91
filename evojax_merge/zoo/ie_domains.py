"""Domains of the compositional zoo: which entity types each uses and its sentence templates.

Every domain uses the three core types (person, location, organization) and two private ones
(see :mod:`evojax_merge.zoo.lexicon`). Slots are ``{type}``; a second slot of one type takes a
digit, ``{person2}``. Templates without slots are the "nothing to extract" sentences. Pure data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evojax_merge.zoo.lexicon import CORE_TYPES

SLOT = re.compile(r"\{([a-z]+)(\d*)\}")


@dataclass(frozen=True)
class IEDomain:
    name: str
    private: tuple[str, str]
    templates: tuple[str, ...]
    fillers: tuple[str, ...]

    @property
    def types(self) -> tuple[str, ...]:
        return (*CORE_TYPES, *self.private)


IE_DOMAINS: tuple[IEDomain, ...] = (
    IEDomain("news", ("law", "party"), (
        "{person} of the {party} signed the {law} in {location}",
        "the {party} opposed the {law}",
        "{person} left the {party} after a vote in {location}",
        "{organization} criticised the {law}",
        "the {law} was passed with help from {person}",
        "{person} met {person2} of {organization} in {location}",
        "the {party} won in {location}",
        "{organization} praised {person} for the {law}",
    ), ("the vote was delayed again", "crowds gathered outside the hall")),
    IEDomain("sports", ("team", "tournament"), (
        "{person} scored twice as the {team} won the {tournament}",
        "the {team} beat the {team2} in {location}",
        "{person} joined the {team} from {organization}",
        "the {tournament} was held in {location}",
        "{organization} sponsors the {tournament}",
        "{person} coached the {team} at the {tournament}",
        "{person} met {person2} of {organization} in {location}",
        "the {team} lost the {tournament} final",
    ), ("the match was delayed by rain", "fans sang until midnight")),
    IEDomain("medicine", ("disease", "drug"), (
        "{person} treated the {disease} with {drug}",
        "{organization} tested {drug} against {disease}",
        "an outbreak of {disease} hit {location}",
        "{drug} was approved by {organization}",
        "{person} studied {disease} in {location}",
        "patients with {disease} received {drug}",
        "{person} met {person2} of {organization} in {location}",
        "{organization} recalled the {drug}",
    ), ("the ward was quiet overnight", "nurses worked long shifts")),
    IEDomain("finance", ("fund", "currency"), (
        "{person} moved the {fund} into {currency}",
        "{organization} launched the {fund} in {location}",
        "the {currency} fell against the {currency2}",
        "{person} manages the {fund} for {organization}",
        "traders in {location} sold {currency}",
        "the {fund} bought shares of {organization}",
        "{person} met {person2} of {organization} in {location}",
        "{organization} priced the deal in {currency}",
    ), ("markets closed lower today", "analysts expected a calm week")),
    IEDomain("film", ("film", "award"), (
        "{person} directed the {film} in {location}",
        "the {film} won the {award}",
        "{person} received the {award} for the {film}",
        "{organization} produced the {film}",
        "the {award} went to {person}",
        "{person} starred in the {film} with {person2}",
        "{person} met {person2} of {organization} in {location}",
        "{organization} bought the rights to the {film}",
    ), ("the premiere sold out quickly", "critics left before the end")),
    IEDomain("science", ("chemical", "instrument"), (
        "{person} measured the {chemical} with the {instrument}",
        "{organization} built the {instrument} in {location}",
        "the {instrument} detected {chemical}",
        "{person} synthesised {chemical} at {organization}",
        "researchers in {location} heated the {chemical}",
        "{organization} sold the {instrument} to {person}",
        "{person} met {person2} of {organization} in {location}",
        "the {chemical} reacted with the {chemical2}",
    ), ("the experiment ran overnight", "the results were not repeated")),
)
IE_DOMAINS_BY_NAME: dict[str, IEDomain] = {d.name: d for d in IE_DOMAINS}
PRIVATE_TYPES: tuple[str, ...] = tuple(t for d in IE_DOMAINS for t in d.private)
