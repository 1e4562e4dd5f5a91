"""The built-in zoo's domains: entity, relation and event inventories, lexicons and templates.

Pure data. Every domain is written so that one task type is the *same skill* everywhere: the
template grammar, the slot syntax and the answer format do not depend on the domain, only the
type names and the words do. That is what lets a merged pool of other domains' adapters transfer.

Template slots:
- mention templates (``Domain.mentions``): ``{type}``; a repeated type takes a digit suffix,
  ``{city2}``;
- relation templates: ``{h}`` (head entity) and ``{t}`` (tail entity);
- event templates: ``{trigger}`` and one ``{role}`` slot per argument (a template may leave an
  optional role out).

Everything is lower case (the zoo tokenizer lower-cases anyway). No entity form contains any of
``; : , ( )`` and no template contains ``; : ( )``, so answers parse unambiguously;
:func:`check_domain` enforces this and the other invariants the generator relies on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SLOT_RE = re.compile(r"\{([a-z_ ]+?)(\d*)\}")


@dataclass(frozen=True)
class RelationType:
    """A directed relation ``head --name--> tail`` and the clauses that express it."""

    name: str
    head: str
    tail: str
    templates: tuple[str, ...]


@dataclass(frozen=True)
class EventType:
    """An event: trigger words (interchangeable in every template) and typed argument roles."""

    name: str
    triggers: tuple[str, ...]
    roles: tuple[tuple[str, str], ...]  # (role, entity type), in option-list order
    templates: tuple[str, ...]

    def role_type(self, role: str) -> str:
        """The entity type that fills ``role``."""
        return dict(self.roles)[role]


@dataclass(frozen=True)
class Domain:
    """One domain: typed lexicon, relation and event inventories, and sentence templates."""

    name: str
    lexicon: Mapping[str, tuple[str, ...]]  # entity type -> surface forms (option order = key order)
    relations: tuple[RelationType, ...]
    events: tuple[EventType, ...]
    mentions: tuple[str, ...]  # clauses with entities but no relation or event
    fillers: tuple[str, ...]  # clauses without any entity

    @property
    def entity_types(self) -> tuple[str, ...]:
        """Entity type names in option-list order."""
        return tuple(self.lexicon)

    def relation(self, name: str) -> RelationType:
        """The relation type called ``name``."""
        return next(r for r in self.relations if r.name == name)


# --- shared pools -------------------------------------------------------------------------------

_FIRST = (
    "anna ben carla david elena frank grace hugo irene jack karen leo maria nick olga paul rosa "
    "sam tina victor wendy xavier yara zack alice bruno chloe diego emma felix gina henry iris "
    "jonas kate liam mona noah petra raul"
).split()
_LAST = (
    "smith garcia novak tanaka mueller rossi kowalski dubois silva larsen okafor chen patel kim "
    "ivanov moreau fischer costa nielsen horvat berg santos weber lopez murphy schmidt ricci "
    "popescu haddad yilmaz lindqvist morales kovacs andersen ferreira bauer romano nakamura "
    "okonkwo brennan"
).split()


def _people(start: int, n: int = 20) -> tuple[str, ...]:
    """``n`` distinct "first last" names; disjoint index ranges give disjoint name sets.

    Index i pairs first name ``i % 40`` with last name ``(i // 40 + i) % 40``: a bijection on
    0..1599, so ranges that do not overlap never share a name.
    """
    k = len(_FIRST)
    return tuple(f"{_FIRST[i % k]} {_LAST[(i // k + i) % k]}" for i in range(start, start + n))


def _amounts(numbers: str, units: str) -> tuple[str, ...]:
    """Money amounts: every number word with every unit, number-major."""
    return tuple(f"{n} {u}" for n in numbers.split(",") for u in units.split(","))


_CITIES_A = (
    "paris", "berlin", "madrid", "lisbon", "vienna", "prague", "oslo", "dublin", "warsaw",
    "athens", "rome", "milan", "munich", "zurich", "geneva", "lyon", "porto", "seville",
    "new york", "cape town",
)
_CITIES_B = (
    "krakow", "budapest", "helsinki", "stockholm", "copenhagen", "amsterdam", "brussels",
    "tokyo", "osaka", "seoul", "toronto", "chicago", "boston", "denver", "austin", "sydney",
    "cairo", "nairobi", "buenos aires", "hong kong",
)


def _split(text: str) -> tuple[str, ...]:
    """Comma-separated forms -> tuple (keeps the data below compact)."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _rel(name: str, head: str, tail: str, *templates: str) -> RelationType:
    return RelationType(name, head, tail, tuple(templates))


def _event(name: str, triggers: str, roles: str, *templates: str) -> EventType:
    """``roles`` is ``"role=type role=type"``."""
    pairs = tuple(tuple(p.split("=")) for p in roles.split())
    return EventType(name, _split(triggers), pairs, tuple(templates))  # type: ignore[arg-type]


# --- the domains --------------------------------------------------------------------------------

MOVIE = Domain(
    name="movie",
    lexicon={
        "director": _people(0),
        "actor": _people(20),
        "film": _split(
            "silent harbor, midnight express line, red horizon, glass garden, paper moon rising, "
            "iron valley, last lighthouse, summer of wolves, broken compass, velvet storm, "
            "echoes of mars, quiet giant, neon river, winter orchard, falling stars, "
            "hollow crown, desert bloom, copper key, distant thunder, secret tide"
        ),
        "studio": _split(
            "silverline pictures, bluegate studios, northwind films, redwood pictures, "
            "crescent studios, lumen films, starfield pictures, harbor light studios, "
            "oakmont films, paragon pictures, skyway studios, granite films, aurora pictures, "
            "meridian studios, cobalt films, evergreen pictures"
        ),
    },
    relations=(
        _rel("director of", "director", "film", "{h} directed {t}", "{t} was directed by {h}",
             "{h} made the film {t}", "{h} stood behind the camera for {t}"),
        _rel("cast member of", "actor", "film", "{h} starred in {t}",
             "{h} played the lead role in {t}", "{t} features {h} in the main role"),
        _rel("producer of", "studio", "film", "{h} produced {t}", "{t} was produced by {h}",
             "{h} paid for the making of {t}"),
    ),
    events=(
        _event("release", "released, premiered, launched", "distributor=studio work=film",
               "{distributor} {trigger} {work} last friday",
               "last week {distributor} {trigger} the film {work}",
               "{distributor} finally {trigger} {work}"),
        _event("award", "won, received, earned", "winner=actor work=film",
               "{winner} {trigger} the top prize for {work}",
               "{winner} {trigger} an award at the festival"),
    ),
    mentions=(
        "{actor} talked about {film} on the radio", "critics discussed {film} all week",
        "{director} gave a long interview", "fans waited hours to meet {actor}",
        "{studio} opened a new office downtown", "{director} and {actor} had dinner together",
        "the poster of {film} hung in every station", "{studio} posted a new trailer",
    ),
    fillers=(
        "the cinema was full on saturday night", "the popcorn was too salty",
        "many people left before the credits", "ticket prices went up again",
    ),
)

RESTAURANT = Domain(
    name="restaurant",
    lexicon={
        "restaurant": _split(
            "golden spoon, casa verde, blue olive, rusty anchor, little saigon kitchen, "
            "la petite maison, copper pot, sakura house, el toro grill, green fig, bella notte, "
            "salty dog tavern, maple tavern, spice route, trattoria luna, hungry fox, "
            "ocean pearl, olive branch"
        ),
        "chef": _people(100),
        "dish": _split(
            "lobster bisque, mushroom risotto, beef wellington, duck confit, pad thai, "
            "lamb tagine, seafood paella, truffle pasta, chicken tikka, miso ramen, tuna tartare, "
            "pork belly buns, goat cheese salad, chocolate souffle, apple tart, crab cakes, "
            "vegetable curry, grilled octopus"
        ),
        "city": _CITIES_A,
        "critic": _people(120),
    },
    relations=(
        _rel("head chef of", "chef", "restaurant", "{h} runs the kitchen at {t}",
             "{h} cooks at {t} every night", "{t} hired {h} to lead its kitchen"),
        _rel("located in", "restaurant", "city", "{h} sits in the old town of {t}",
             "{h} is a small place in {t}", "you can find {h} in downtown {t}"),
        _rel("signature dish of", "dish", "restaurant", "{h} is what everyone orders at {t}",
             "{t} is famous for its {h}", "the best {h} is served at {t}"),
    ),
    events=(
        _event("opening", "opened, launched, unveiled", "owner=chef venue=restaurant place=city",
               "{owner} {trigger} {venue} in {place}",
               "{owner} {trigger} a second branch of {venue}",
               "in {place} {owner} {trigger} {venue}"),
        _event("review", "praised, reviewed, criticized", "reviewer=critic venue=restaurant",
               "{reviewer} {trigger} {venue} in the sunday paper",
               "in a new column {reviewer} {trigger} {venue}"),
    ),
    mentions=(
        "{critic} ordered the {dish} and a glass of water", "{chef} posted a photo of {dish}",
        "{critic} spent the weekend in {city}", "the menu at {restaurant} changed again",
        "{chef} and {critic} argued about {dish}", "a long queue formed outside {restaurant}",
        "{chef} flew to {city} for a conference",
    ),
    fillers=(
        "the waiter brought the bill", "dinner was served at eight",
        "the tables were booked for weeks", "the soup was cold",
    ),
)

VEHICLE = Domain(
    name="vehicle",
    lexicon={
        "manufacturer": _split(
            "apex motors, kestrel automotive, valor motors, heliax auto, brightway motors, "
            "ironclad vehicles, solara cars, vortex automotive, pinnacle motors, stellar auto, "
            "crown motor works, delta drive, orion vehicles, northstar motors, fjord automotive, "
            "sable motors"
        ),
        "model": _split(
            "falcon gt, aurora s, trekker 4x4, summit suv, zephyr coupe, bolt mini, ranger pro, "
            "vista wagon, nomad xl, pulse ev, comet sedan, tundra hauler, orbit hatch, "
            "titan truck, breeze roadster, atlas van, sierra sport, meteor one, glide cabrio, "
            "rover max"
        ),
        "designer": _people(200),
        "engine": _split(
            "v8 engine, electric motor, hybrid drivetrain, turbo diesel, v6 engine, "
            "hydrogen fuel cell, twin turbo v12, inline four, rotary engine, plug in hybrid, "
            "flat six engine, dual motor setup, three cylinder turbo, biturbo v8, boxer engine"
        ),
        "city": _CITIES_B,
    },
    relations=(
        _rel("manufacturer of", "manufacturer", "model", "{h} builds the {t}",
             "the {t} is built by {h}", "{h} assembles the {t} in large numbers"),
        _rel("powered by", "model", "engine", "the {h} runs on a {t}", "the {h} uses a {t}",
             "a {t} drives the {h}"),
        _rel("designer of", "designer", "model", "{h} designed the {t}",
             "the {t} was designed by {h}", "{h} drew the first sketches of the {t}"),
    ),
    events=(
        _event("recall", "recalled, withdrew, suspended", "maker=manufacturer product=model",
               "{maker} {trigger} the {product} after safety tests",
               "{maker} {trigger} thousands of {product} cars"),
        _event("launch", "unveiled, introduced, presented", "maker=manufacturer product=model place=city",
               "{maker} {trigger} the {product} at a show in {place}",
               "in {place} {maker} {trigger} the new {product}",
               "{maker} {trigger} the {product} to the press"),
    ),
    mentions=(
        "{designer} drove a {model} to work", "the factory of {manufacturer} in {city} hired new staff",
        "{designer} spoke at a conference in {city}", "a {engine} is loud but strong",
        "dealers in {city} expect more buyers this year", "{designer} met engineers from {manufacturer}",
    ),
    fillers=(
        "traffic was slow on the highway", "fuel prices fell this month",
        "the parking lot was empty", "the road was closed for repairs",
    ),
)

NEWS = Domain(
    name="news",
    lexicon={
        "politician": _people(300),
        "party": _split(
            "green alliance, liberal union, national renewal party, social democratic league, "
            "freedom party, progress movement, civic platform, labour alliance, unity party, "
            "reform coalition, rural party, workers league, citizens movement, "
            "new horizon party, centre union, pirate party"
        ),
        "country": _split(
            "france, germany, spain, portugal, italy, poland, norway, sweden, finland, greece, "
            "austria, ireland, brazil, canada, japan, kenya, egypt, chile, peru, india"
        ),
        "organization": _split(
            "united nations, world bank, red cross, european commission, interpol, nato, "
            "african union, unesco, amnesty international, greenpeace, imf, wto, oecd, opec, asean"
        ),
    },
    relations=(
        _rel("member of", "politician", "party", "{h} joined {t}", "{h} belongs to {t}",
             "{h} is a senior figure in {t}"),
        _rel("leader of", "politician", "country", "{h} governs {t}",
             "{h} became president of {t}", "{t} is led by {h}"),
        _rel("funder of", "organization", "country", "{h} gave money to {t}",
             "{t} received a loan from {h}", "{h} financed new schools in {t}"),
    ),
    events=(
        _event("election", "elected, chose, picked", "winner=politician place=country",
               "voters in {place} {trigger} {winner} as their new leader",
               "{place} {trigger} {winner} in a close vote"),
        _event("protest", "protested, marched, rallied", "group=party place=country",
               "members of {group} {trigger} in the capital of {place}",
               "supporters of {group} {trigger} against new taxes"),
        _event("summit", "met, gathered, convened", "participant=politician host=organization",
               "{participant} {trigger} with officials of {host} on monday",
               "{participant} {trigger} at the offices of {host}"),
    ),
    mentions=(
        "{politician} gave a speech about taxes", "reporters asked {politician} about {country}",
        "{organization} published a report on {country}", "posters of {party} covered the walls",
        "{politician} visited a farm near the border", "a spokesperson for {party} declined to comment",
    ),
    fillers=(
        "the parliament closed early today", "the debate lasted six hours",
        "the vote was delayed again", "nobody expected the result",
    ),
)

SCIENCE = Domain(
    name="science",
    lexicon={
        "scientist": _people(400),
        "university": _split(
            "northgate university, riverside institute, kingsbridge college, eastfield university, "
            "westmoor polytechnic, highland university, lakeshore institute, "
            "saint clement college, meadowbrook university, ironwood institute, "
            "southport university, crestview college, bayside institute, "
            "old harbor university, greenhill academy, stonebridge university"
        ),
        "field": _split(
            "quantum physics, marine biology, organic chemistry, number theory, genetics, "
            "astronomy, neuroscience, geology, climate science, particle physics, ecology, "
            "robotics, linguistics, materials science, virology, oceanography, botany, statistics"
        ),
        "journal": _split(
            "physics letters, cell reports, plant annals, terra journal, neural review, "
            "chemistry today, astro bulletin, green planet journal, marine science quarterly, "
            "data review, genome digest, frontiers of math, lab notes weekly, "
            "open science record, quantum review"
        ),
        "prize": _split(
            "halden medal, aster prize, kepler award, curie medal, lindholm prize, gauss medal, "
            "orion award, vesta prize, darwin medal, newton award, helix prize, pasteur medal, "
            "faraday prize, tesla award, galileo medal"
        ),
    },
    relations=(
        _rel("works at", "scientist", "university", "{h} teaches at {t}",
             "{h} runs a lab at {t}", "{t} hired {h} last year"),
        _rel("expert in", "scientist", "field", "{h} studies {t}", "{h} wrote a textbook on {t}",
             "{h} is a leading voice in {t}"),
        _rel("editor of", "scientist", "journal", "{h} edits {t}", "{t} is edited by {h}",
             "{h} chooses the papers for {t}"),
    ),
    events=(
        _event("discovery", "discovered, identified, detected", "finder=scientist area=field",
               "{finder} {trigger} a new effect in {area}",
               "working in {area} {finder} {trigger} a strange signal"),
        _event("award", "won, received, earned", "winner=scientist honor=prize",
               "{winner} {trigger} the {honor}", "{winner} {trigger} the {honor} this spring"),
        _event("publication", "published, released, printed", "author=scientist venue=journal",
               "{author} {trigger} a paper in {venue}", "{author} {trigger} new data in {venue}"),
    ),
    mentions=(
        "{scientist} gave a lecture on {field}", "students of {university} visited the museum",
        "{journal} changed its cover design", "{scientist} traveled to a workshop abroad",
        "the library of {university} is open all night", "{scientist} reads {journal} every week",
    ),
    fillers=(
        "the experiment took three weeks", "the microscope broke again",
        "the results were hard to explain", "the lab smelled of coffee",
    ),
)

MUSIC = Domain(
    name="music",
    lexicon={
        "musician": _people(500),
        "band": _split(
            "the velvet echoes, midnight cartel, glass animals club, iron tulips, "
            "silver foxes, neon saints, the broken strings, paper tigers, northern lights band, "
            "electric owls, the quiet riots, crimson tide band, lost satellites, "
            "the wandering dogs, golden hour, static bloom"
        ),
        "album": _split(
            "blue hours, city of sparks, echo chamber, wild hearts, night drive, "
            "paper planes, slow motion, northern skies, rust and gold, afterglow, "
            "broken radio, summer static, glass houses, dark water, first light, open roads"
        ),
        "label": _split(
            "sunbeam records, blackbird music, ironside records, vinyl moon, harbor sounds, "
            "pulse records, red door music, sonic forest, atlas records, loudhouse music, "
            "cedar records, bright noise, nightjar records, echo valley music, soundwave records"
        ),
        "venue": _split(
            "the royal hall, blue room club, riverside arena, the old theater, "
            "sunset amphitheater, the velvet lounge, city music hall, the warehouse stage, "
            "harbor pavilion, the jazz cellar, union square stage, grand opera house, "
            "the basement club, lakeside bowl, crystal ballroom"
        ),
    },
    relations=(
        _rel("member of", "musician", "band", "{h} plays guitar in {t}", "{h} sings for {t}",
             "{t} added {h} to its lineup"),
        _rel("artist of", "band", "album", "{h} recorded {t}", "{t} is the new record from {h}",
             "{h} wrote every track on {t}"),
        _rel("signed to", "band", "label", "{h} made a deal with {t}", "{h} records for {t}",
             "{t} represents {h}"),
    ),
    events=(
        _event("concert", "performed, played, headlined", "performer=band place=venue",
               "{performer} {trigger} at {place} on friday",
               "last night {performer} {trigger} a sold out show at {place}"),
        _event("release", "released, dropped, issued", "artist=band record=album company=label",
               "{artist} {trigger} {record} through {company}",
               "{artist} {trigger} {record} this month"),
    ),
    mentions=(
        "{musician} posted a video from the studio", "fans of {band} camped outside",
        "{album} was playing in every shop", "{musician} bought a new piano",
        "{venue} sold out in ten minutes", "{musician} was spotted near {venue}",
    ),
    fillers=(
        "the crowd sang along to every word", "the speakers were far too loud",
        "the concert started an hour late", "tickets sold out quickly",
    ),
)

SPORTS = Domain(
    name="sports",
    lexicon={
        "athlete": _people(600),
        "team": _split(
            "river city rovers, north end united, harbor hawks, mountain lions fc, "
            "eastside eagles, red valley rangers, iron bay sharks, capital comets, "
            "golden coast kings, forest park wolves, union athletic, southgate strikers, "
            "blue harbor bears, westfield warriors, lakeside lynx, old town titans"
        ),
        "stadium": _split(
            "victory park, the grand arena, riverside ground, northfield stadium, "
            "oak lane stadium, harbor dome, summit field, the coliseum, eastgate park, "
            "kingsway stadium, millennium ground, pine hill arena, crescent stadium, "
            "the iron bowl, meadow lane"
        ),
        "coach": _people(620),
    },
    relations=(
        _rel("plays for", "athlete", "team", "{h} scored twice for {t}", "{h} signed with {t}",
             "{t} added {h} to the squad"),
        _rel("coach of", "coach", "team", "{h} trains {t}", "{t} is coached by {h}",
             "{h} took charge of {t}"),
        _rel("home ground of", "stadium", "team", "{t} plays its home games at {h}",
             "{h} is the home of {t}", "{t} relocated to {h} in the summer"),
    ),
    events=(
        _event("match", "beat, defeated, edged", "winner=team loser=team location=stadium",
               "{winner} {trigger} {loser} at {location}", "{winner} {trigger} {loser} in the final",
               "at {location} {winner} {trigger} {loser}"),
        _event("transfer", "moved, transferred, switched", "player=athlete club=team",
               "{player} {trigger} to {club} for a record fee",
               "after a long season {player} {trigger} to {club}"),
        _event("injury", "injured, hurt, twisted", "player=athlete location=stadium",
               "{player} {trigger} a knee at {location}",
               "{player} {trigger} an ankle during training"),
    ),
    mentions=(
        "{athlete} signed autographs for hours", "{coach} watched the game from the stands",
        "fans of {team} filled the streets", "{stadium} was covered in snow",
        "{athlete} and {coach} shook hands", "{coach} gave a short press conference",
    ),
    fillers=(
        "the referee blew the whistle", "the game went to extra time",
        "it rained for the whole match", "the season ends next month",
    ),
)

MEDICINE = Domain(
    name="medicine",
    lexicon={
        "doctor": _people(700),
        "disease": _split(
            "diabetes, asthma, malaria, influenza, tuberculosis, hepatitis b, measles, migraine, "
            "pneumonia, arthritis, anemia, bronchitis, psoriasis, epilepsy, lyme disease, "
            "celiac disease, gout, shingles"
        ),
        "drug": _split(
            "metformin, ibuprofen, amoxicillin, insulin, aspirin, prednisone, lisinopril, "
            "omeprazole, albuterol, warfarin, doxycycline, acyclovir, methotrexate, paracetamol, "
            "cetirizine, atorvastatin, levothyroxine, naproxen"
        ),
        "hospital": _split(
            "st mary hospital, city general hospital, northside clinic, lakeview medical center, "
            "riverside hospital, mercy clinic, hillcrest hospital, central health center, "
            "oakwood clinic, pine valley hospital, harbor medical center, summit clinic, "
            "westgate hospital, sunrise clinic, royal infirmary"
        ),
        "symptom": _split(
            "fever, chest pain, dry cough, fatigue, headache, skin rash, joint pain, nausea, "
            "shortness of breath, dizziness, blurred vision, night sweats, sore throat, "
            "muscle cramps, weight loss, swollen ankles"
        ),
    },
    relations=(
        _rel("treatment for", "drug", "disease", "{h} is used against {t}",
             "doctors prescribe {h} for {t}", "{t} responds well to {h}"),
        _rel("symptom of", "symptom", "disease", "{h} is a common sign of {t}",
             "{t} often causes {h}", "patients with {t} report {h}"),
        _rel("works at", "doctor", "hospital", "{h} works at {t}", "{h} leads a ward at {t}",
             "{t} employs {h}"),
    ),
    events=(
        _event("diagnosis", "diagnosed, detected, confirmed", "physician=doctor illness=disease",
               "{physician} {trigger} {illness} in a young patient",
               "{illness} was {trigger} by {physician}"),
        _event("approval", "approved, authorized, cleared", "medicine=drug condition=disease",
               "regulators {trigger} {medicine} for {condition}",
               "{medicine} was {trigger} for use against {condition}",
               "the agency {trigger} {medicine}"),
    ),
    mentions=(
        "{doctor} answered questions from students", "the pharmacy ran out of {drug}",
        "a patient complained of {symptom}", "{hospital} opened a new wing",
        "{doctor} wrote an article about sleep", "visitors waited in the hall of {hospital}",
    ),
    fillers=(
        "the waiting room was crowded", "the nurse checked the chart",
        "visiting hours end at six", "the ambulance arrived quickly",
    ),
)

FINANCE = Domain(
    name="finance",
    lexicon={
        "company": _split(
            "vantage holdings, blue ridge capital, orion industries, meridian group, "
            "castle rock energy, silverleaf corp, northwind trading, atlas logistics, "
            "pioneer foods, keystone mining, horizon retail, summit pharma, cobalt shipping, "
            "evergreen power, lumen telecom, redstone steel, harbor insurance, zenith airlines"
        ),
        "executive": _people(800),
        "bank": _split(
            "first harbor bank, union savings bank, crown trust, national credit bank, "
            "alpine bank, granite savings, royal exchange bank, coastal bank, liberty trust, "
            "metro credit union, oak street bank, capital one trust, the people bank, "
            "northern trust bank, sterling bank"
        ),
        "amount": _amounts(
            "two,three,five,eight,ten,twelve,forty,ninety", "million dollars,billion euros,million pounds"
        ),
    },
    relations=(
        _rel("chief executive of", "executive", "company", "{h} runs {t}",
             "{t} named {h} as its new boss", "{h} has led {t} since spring"),
        _rel("lender to", "bank", "company", "{h} lent money to {t}",
             "{t} borrowed heavily from {h}", "{h} extended a credit line to {t}"),
    ),
    events=(
        _event("acquisition", "acquired, bought, purchased", "buyer=company target=company price=amount",
               "{buyer} {trigger} {target} for {price}",
               "{buyer} {trigger} {target} in a deal worth {price}",
               "{buyer} {trigger} its rival {target}"),
        _event("earnings", "reported, posted, announced", "firm=company value=amount",
               "{firm} {trigger} a profit of {value}", "{firm} {trigger} a loss of {value}"),
    ),
    mentions=(
        "{executive} rang the opening bell", "analysts expect {company} to grow",
        "{bank} raised its fees", "{executive} sold a house for {amount}",
        "shares of {company} fell in early trading", "{executive} spoke to investors about {company}",
    ),
    fillers=(
        "markets were calm this morning", "interest rates did not change",
        "the trading floor was quiet", "inflation slowed last quarter",
    ),
)

TRAVEL = Domain(
    name="travel",
    lexicon={
        "airline": _split(
            "skybridge air, northern wings, aero azul, pacific jet, alpine airways, "
            "sunline airlines, blue crane air, coastal express, polar air, vista airways, "
            "orient star airlines, meridian air, zephyr jet, continental hop, island hopper air"
        ),
        "city": _CITIES_A,
        "hotel": _split(
            "grand palace hotel, the harbor inn, seaside lodge, hotel aurora, the ivy house, "
            "mountain view resort, old mill hotel, the crown suites, parkside hotel, "
            "lotus garden inn, hotel bellavista, the lighthouse lodge, riverside suites, "
            "the copper kettle inn, desert rose resort, the majestic"
        ),
        "landmark": _split(
            "the old cathedral, the iron bridge, the royal palace, the clock tower, "
            "the great market, the city walls, the botanical garden, the harbor lighthouse, "
            "the opera house, the stone fortress, the hanging gardens, the river promenade, "
            "the marble arch, the old observatory, the sun temple"
        ),
        "traveler": _people(900),
    },
    relations=(
        _rel("flies to", "airline", "city", "{h} added a daily route to {t}",
             "{t} is served by {h}", "{h} now goes nonstop to {t}"),
        _rel("hotel in", "hotel", "city", "{h} stands near the center of {t}",
             "{h} is the oldest hotel in {t}", "the best rooms in {t} are at {h}"),
        _rel("attraction in", "landmark", "city", "{h} draws crowds to {t}",
             "visitors to {t} rarely miss {h}", "{h} towers over {t}"),
    ),
    events=(
        _event("delay", "delayed, canceled, postponed", "carrier=airline destination=city",
               "{carrier} {trigger} its flight to {destination}",
               "{carrier} {trigger} all evening flights to {destination}"),
        _event("booking", "booked, reserved, chose", "guest=traveler lodging=hotel",
               "{guest} {trigger} a room at {lodging}", "{guest} {trigger} two nights at {lodging}"),
        _event("visit", "visited, toured, explored", "visitor=traveler site=landmark",
               "{visitor} {trigger} {site} on a rainy afternoon",
               "{visitor} {trigger} {site} with a guide"),
    ),
    mentions=(
        "{traveler} lost a suitcase at the airport", "{traveler} wrote a blog about {city}",
        "the lobby of {hotel} was freshly painted", "{airline} changed its logo",
        "photos of {landmark} are everywhere online", "{traveler} took a train across the country",
    ),
    fillers=(
        "the flight was full of families", "the beach was crowded in july",
        "the tour bus left at dawn", "the weather was perfect all week",
    ),
)

EDUCATION = Domain(
    name="education",
    lexicon={
        "teacher": _people(1000),
        "student": _people(1020),
        "school": _split(
            "lincoln high school, maple grove academy, st anne college, riverdale school, "
            "oakridge academy, hillside grammar school, westbrook high, pinecrest college, "
            "the harbor school, summit prep, elmwood academy, brookfield high, "
            "north valley school, cedar hill college, lakeside academy, kingsley school"
        ),
        "subject": _split(
            "algebra, chemistry, world history, biology, geography, french, art history, "
            "music theory, economics, physics, literature, computer science, philosophy, latin, "
            "calculus, spanish, drama, astronomy"
        ),
    },
    relations=(
        _rel("teaches at", "teacher", "school", "{h} joined the staff of {t}",
             "{t} hired {h} as a new teacher", "{h} has worked at {t} for years"),
        _rel("enrolled at", "student", "school", "{h} studies at {t}",
             "{h} is in the final year at {t}", "{t} admitted {h}"),
        _rel("instructor of", "teacher", "subject", "{h} gives lessons in {t}",
             "{h} teaches {t} to first year students", "{t} is taught by {h}"),
    ),
    events=(
        _event("exam", "passed, failed, retook", "examinee=student topic=subject",
               "{examinee} {trigger} the final exam in {topic}",
               "{examinee} {trigger} the test in {topic} on tuesday"),
        _event("scholarship", "awarded, granted, offered", "giver=school recipient=student",
               "{giver} {trigger} a scholarship to {recipient}",
               "{giver} {trigger} {recipient} a full grant"),
    ),
    mentions=(
        "{student} forgot the homework at home", "{teacher} organized a trip to the museum",
        "parents met at {school} on friday", "{student} loves {subject}",
        "{teacher} and {student} talked after class", "the new textbook for {subject} arrived",
    ),
    fillers=(
        "the bell rang at noon", "the classroom was too warm",
        "the holidays start next week", "lunch was served in the hall",
    ),
)

TECHNOLOGY = Domain(
    name="technology",
    lexicon={
        "company": _split(
            "bytewave, cloudnine labs, pixelforge, quantix, nimbus systems, datacore, brightbit, "
            "logicsphere, snapgrid, hyperloom, codecraft, syncwell, vertexa, arcline software, "
            "bluepeak tech, zentrix, omnilink, fluxbase"
        ),
        "product": _split(
            "photon phone, swiftdesk, cloudvault, talkbox, nova tablet, streamly, sketchpad pro, "
            "mapmate, pulse watch, codepilot, fileflow, echo speaker, chatnest, lumen browser, "
            "taskhive, vision glasses, docsmith, beacon router"
        ),
        "founder": _people(1100),
        "language": _split(
            "python, rust, java, kotlin, haskell, ruby, typescript, scala, elixir, erlang, "
            "fortran, cobol, perl, lua, ocaml, clojure, dart, zig"
        ),
    },
    relations=(
        _rel("founder of", "founder", "company", "{h} founded {t}", "{t} was started by {h}",
             "{h} set up {t} in a garage"),
        _rel("developer of", "company", "product", "{h} makes {t}", "{t} is developed by {h}",
             "{h} sells millions of {t} units"),
        _rel("written in", "product", "language", "{h} was coded in {t}",
             "the core of {h} uses {t}", "engineers rebuilt {h} with {t}"),
    ),
    events=(
        _event("launch", "launched, unveiled, announced", "maker=company item=product",
               "{maker} {trigger} {item} at its yearly event", "{maker} quietly {trigger} {item}"),
        _event("breach", "hacked, breached, attacked", "victim=company",
               "attackers {trigger} {victim} over the weekend",
               "{victim} was {trigger} by unknown attackers"),
        _event("acquisition", "acquired, bought, purchased", "buyer=company target=company",
               "{buyer} {trigger} {target} last month", "{buyer} {trigger} the startup {target}"),
    ),
    mentions=(
        "{founder} posted a long thread online", "{company} is hiring engineers",
        "users complained about {product}", "{founder} gave a talk about {language}",
        "a new version of {language} came out", "{founder} rented a flat near the office",
    ),
    fillers=(
        "the server went down at midnight", "the update took an hour",
        "the battery died again", "the office wifi was slow",
    ),
)

LAW = Domain(
    name="law",
    lexicon={
        "judge": _people(1200),
        "lawyer": _people(1220),
        "court": _split(
            "supreme court, high court, northern district court, court of appeals, "
            "federal circuit court, constitutional court, county court, family court, tax court, "
            "labour tribunal, civil court of lyon, magistrates court, military court, "
            "admiralty court, land court"
        ),
        "firm": _split(
            "baker and hale, stone partners, wright legal, marsh and cole, north bridge law, "
            "iron gate counsel, hart and finch, silver oak legal, crane associates, "
            "blackwood law, fairfax partners, king and pryor, ashford legal, lumen law group, "
            "harbor counsel"
        ),
        "law": _split(
            "privacy act, clean water act, fair trade law, tenant protection act, "
            "data security act, labor code, consumer rights act, copyright act, "
            "election reform law, public records act, animal welfare act, banking code, "
            "road safety act, housing act, competition law"
        ),
    },
    relations=(
        _rel("judge at", "judge", "court", "{h} sits on the {t}", "{h} was appointed to the {t}",
             "the {t} swore in {h}"),
        _rel("partner at", "lawyer", "firm", "{h} joined {t} as a senior partner",
             "{t} promoted {h} last year", "{h} leads the trial team at {t}"),
    ),
    events=(
        _event("ruling", "ruled, decided, found", "adjudicator=judge venue=court",
               "{adjudicator} {trigger} against the city at the {venue}",
               "at the {venue} {adjudicator} {trigger} for the tenants"),
        _event("lawsuit", "sued, charged, accused", "attorney=lawyer statute=law",
               "{attorney} {trigger} the mayor under the {statute}",
               "{attorney} {trigger} the company"),
        _event("appeal", "appealed, challenged, contested", "attorney=lawyer venue=court",
               "{attorney} {trigger} the verdict before the {venue}",
               "{attorney} {trigger} the sentence"),
    ),
    mentions=(
        "{judge} retired after thirty years", "{lawyer} wrote a book about the {law}",
        "reporters waited outside the {court}", "{firm} moved to a bigger office",
        "{lawyer} and {judge} met at a dinner", "students read the {law} in class",
    ),
    fillers=(
        "the hearing was postponed", "the jury left the room",
        "the files were sealed", "the witness spoke quietly",
    ),
)

COOKING = Domain(
    name="cooking",
    lexicon={
        "ingredient": _split(
            "brown sugar, olive oil, garlic, fresh basil, butter, flour, honey, lemon zest, "
            "black pepper, cinnamon, dark chocolate, coconut milk, parmesan, ginger, soy sauce, "
            "heavy cream, red onion, vanilla, sea salt, almonds"
        ),
        "recipe": _split(
            "banana bread, tomato soup, lemon tart, beef stew, carrot cake, pesto pasta, "
            "fish tacos, apple pie, chicken curry, pancakes, french toast, lentil soup, "
            "pumpkin pie, fried rice, meatballs, brownies, shortbread, onion soup"
        ),
        "tool": _split(
            "cast iron pan, stand mixer, dutch oven, food processor, rolling pin, slow cooker, "
            "wok, blender, pressure cooker, baking sheet, whisk, mortar and pestle, grill pan, "
            "steamer basket, pizza stone"
        ),
        "cook": _people(1300),
    },
    relations=(
        _rel("ingredient of", "ingredient", "recipe", "{t} needs a cup of {h}",
             "{h} goes into {t}", "add {h} to make {t}"),
        _rel("used for", "tool", "recipe", "a {h} is essential for {t}", "you make {t} in a {h}",
             "grab a {h} before starting {t}"),
        _rel("creator of", "cook", "recipe", "{h} invented {t}", "{t} was first made by {h}",
             "{h} came up with {t} by accident"),
    ),
    events=(
        _event("contest", "won, took, claimed", "champion=cook entry=recipe",
               "{champion} {trigger} first place with {entry}",
               "{champion} {trigger} the trophy at the fair"),
        _event("class", "taught, demonstrated, showed", "instructor=cook lesson=recipe tool=tool",
               "{instructor} {trigger} a class on {lesson}",
               "{instructor} {trigger} how to make {lesson} with a {tool}"),
    ),
    mentions=(
        "{cook} went shopping for {ingredient}", "the recipe for {recipe} is on the fridge",
        "a {tool} was on sale this week", "{cook} burned the toast",
        "{cook} posted a video about {recipe}", "the shop ran out of {ingredient}",
    ),
    fillers=(
        "the kitchen smelled wonderful", "the oven needs to be cleaned",
        "dinner was ready at seven", "the sink was full of dishes",
    ),
)

REAL_ESTATE = Domain(
    name="real_estate",
    lexicon={
        "agent": _people(1400),
        "agency": _split(
            "keystone realty, blue door homes, prime estates, harbor properties, "
            "city nest realty, oakwood estates, summit homes, brick and beam realty, "
            "greenleaf property, skyline realty, hearth and home, northgate estates, "
            "lantern realty, cornerstone homes, parkview property"
        ),
        "property": _split(
            "harbor view loft, maple court house, old mill apartments, birch lane cottage, "
            "glass tower condo, sunset villa, brick townhouse, willow farmhouse, garden flat, "
            "cedar ridge estate, corner studio, lakeside bungalow, rooftop penthouse, "
            "river mews duplex, orchard manor, station road flat"
        ),
        "neighborhood": _split(
            "old town, riverside, the north quarter, green hills, harbor district, west end, "
            "university park, the arts district, eastgate, maple heights, south bank, "
            "the docklands, hill park, pine grove, the latin quarter, little italy"
        ),
        "price": _amounts(
            "two hundred,three hundred,four hundred,five hundred,six hundred,seven hundred,"
            "eight hundred,nine hundred",
            "thousand dollars,thousand euros",
        ),
    },
    relations=(
        _rel("works for", "agent", "agency", "{h} sells homes for {t}", "{t} recruited {h}",
             "{h} is the top seller at {t}"),
        _rel("located in", "property", "neighborhood", "the {h} sits on a quiet street in {t}",
             "the {h} lies at the edge of {t}", "the {h} is the nicest home in {t}"),
        _rel("listed by", "property", "agency", "{t} is marketing the {h}",
             "the {h} appears on the website of {t}", "{t} took on the {h} this week"),
    ),
    events=(
        _event("sale", "sold, auctioned, offloaded", "broker=agent home=property amount=price",
               "{broker} {trigger} the {home} for {amount}",
               "{broker} {trigger} the {home} within a week"),
        _event("renovation", "renovated, rebuilt, restored", "home=property cost=price",
               "the owners {trigger} the {home} for {cost}",
               "builders {trigger} the {home} last year"),
    ),
    mentions=(
        "{agent} showed the house to a young couple", "{agency} put up new signs",
        "prices in {neighborhood} keep rising", "{agent} drove past the {property}",
        "{agent} lives in {neighborhood}", "buyers asked about parking near the {property}",
    ),
    fillers=(
        "the open house was busy", "the roof needs new tiles",
        "the garden was overgrown", "mortgage rates went up",
    ),
)

LITERATURE = Domain(
    name="literature",
    lexicon={
        "author": _people(1500),
        "book": _split(
            "the salt road, a house of echoes, the ninth winter, bright water, "
            "letters from nowhere, the paper bridge, under the linden, the long orbit, "
            "ashes and roses, the map thief, a quiet revolution, the orchard keeper, "
            "the last ferry, songs of the north, the clock tower, night of lanterns, "
            "the stone garden, wild harvest"
        ),
        "publisher": _split(
            "penfold press, lantern books, blue heron publishing, quill and ink, "
            "northstar books, harrow house, meadowlark press, stonegate publishing, "
            "kite books, folio and finch, riverbank press, tall tree books, inkwell house, "
            "owl and oak press, beacon books"
        ),
        "character": _split(
            "captain mora, the old ferryman, lady winter, detective hale, little finn, "
            "the iron queen, professor quill, sister agnes, the blind archer, young tomas, "
            "doctor vell, the red fox, king aldric, miss penrose, the clockmaker, sailor bram"
        ),
    },
    relations=(
        _rel("author of", "author", "book", "{h} wrote {t}", "{t} is a novel by {h}",
             "{h} spent ten years writing {t}"),
        _rel("publisher of", "publisher", "book", "{h} printed {t}", "{t} came out with {h}",
             "{h} bought the rights to {t}"),
        _rel("character in", "character", "book", "{h} is the hero of {t}",
             "{t} follows {h} across the sea", "readers meet {h} in {t}"),
    ),
    events=(
        _event("publication", "published, released, issued", "house=publisher work=book",
               "{house} {trigger} {work} in hardcover", "{house} {trigger} {work} last autumn"),
        _event("award", "won, received, collected", "laureate=author work=book",
               "{laureate} {trigger} a major prize for {work}",
               "{laureate} {trigger} an award at the book fair"),
    ),
    mentions=(
        "{author} signed copies at a small shop", "{publisher} moved to a new building",
        "many readers dislike {character}", "{author} gave a reading of {book}",
        "{book} sits on every nightstand", "{author} answered letters from fans",
    ),
    fillers=(
        "the library closed early", "the poem was only four lines long",
        "the bookstore smelled of paper", "the reading lasted an hour",
    ),
)

AGRICULTURE = Domain(
    name="agriculture",
    lexicon={
        "farmer": _people(1540),
        "farm": _split(
            "sunny acres, willow creek farm, green valley ranch, red barn farm, oak hollow farm, "
            "meadow lane ranch, high pasture farm, clover field farm, stony brook ranch, "
            "golden fields farm, misty hill farm, cedar grove ranch, long river farm, "
            "apple hill orchard, fox run farm"
        ),
        "crop": _split(
            "wheat, barley, corn, soybeans, sunflowers, potatoes, rice, oats, rapeseed, "
            "sugar beets, lentils, cotton, tomatoes, grapes, olives, alfalfa"
        ),
        "region": _split(
            "the northern plains, the river delta, the high valley, the coastal lowlands, "
            "the eastern hills, the southern steppe, the lake district, the central basin, "
            "the western ridge, the green belt, the dry uplands, the border country, "
            "the old forest edge, the marsh country, the sunny slopes"
        ),
    },
    relations=(
        _rel("owner of", "farmer", "farm", "{h} inherited {t}", "{t} belongs to {h}",
             "{h} has run {t} for decades"),
        _rel("grown at", "crop", "farm", "{t} plants {h} every spring", "{h} covers most of {t}",
             "fields of {h} surround {t}"),
        _rel("farm in", "farm", "region", "{h} lies in {t}", "{h} is the largest estate in {t}",
             "{t} is home to {h}"),
    ),
    events=(
        _event("harvest", "harvested, gathered, picked", "grower=farmer produce=crop",
               "{grower} {trigger} the {produce} early this year",
               "{grower} {trigger} {produce} before the rain"),
        _event("drought", "struck, hit, scorched", "area=region",
               "a dry spell {trigger} {area} in july", "heat {trigger} {area} for weeks"),
    ),
    mentions=(
        "{farmer} bought a new tractor", "prices for {crop} rose at the market",
        "{farmer} visited a fair in {region}", "the barn at {farm} was painted red",
        "{farmer} talked to the bank about a loan", "trucks carried {crop} to the mill",
    ),
    fillers=(
        "the soil was dry and hard", "the cows came home at dusk",
        "the tractor broke down", "rain fell all night",
    ),
)

DOMAINS: tuple[Domain, ...] = (
    MOVIE, RESTAURANT, VEHICLE, NEWS, SCIENCE, MUSIC, SPORTS, MEDICINE, FINANCE, TRAVEL,
    EDUCATION, TECHNOLOGY, LAW, COOKING, REAL_ESTATE, LITERATURE, AGRICULTURE,
)
DOMAINS_BY_NAME: dict[str, Domain] = {d.name: d for d in DOMAINS}


def get_domain(name: str) -> Domain:
    """The domain called ``name``; a ``KeyError`` lists the known ones."""
    try:
        return DOMAINS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown zoo domain {name!r}; known: {', '.join(DOMAINS_BY_NAME)}") from None


def check_domain(domain: Domain) -> list[str]:
    """Every invariant the generator relies on; returns problems (empty list = consistent)."""
    problems: list[str] = []
    types = set(domain.entity_types)
    if not 3 <= len(types) <= 5:
        problems.append(f"{domain.name}: {len(types)} entity types (want 3-5)")
    if not 2 <= len(domain.relations) <= 4:
        problems.append(f"{domain.name}: {len(domain.relations)} relations (want 2-4)")
    if not 2 <= len(domain.events) <= 3:
        problems.append(f"{domain.name}: {len(domain.events)} events (want 2-3)")
    seen: dict[str, str] = {}
    for etype, forms in domain.lexicon.items():
        if len(forms) < 15:
            problems.append(f"{domain.name}/{etype}: only {len(forms)} forms")
        for form in forms:
            if form in seen:
                problems.append(f"{domain.name}: {form!r} is both {seen[form]} and {etype}")
            seen[form] = etype
            if re.search(r"[;:,()]", form):
                problems.append(f"{domain.name}: form {form!r} has answer punctuation")
    for rel in domain.relations:
        if rel.head not in types or rel.tail not in types:
            problems.append(f"{domain.name}/{rel.name}: unknown head/tail type")
        for tpl in rel.templates:
            if sorted(SLOT_RE.findall(tpl)) != [("h", ""), ("t", "")]:
                problems.append(f"{domain.name}/{rel.name}: template {tpl!r} needs {{h}} and {{t}}")
    for ev in domain.events:
        roles = dict(ev.roles)
        if not set(roles.values()) <= types:
            problems.append(f"{domain.name}/{ev.name}: a role has an unknown entity type")
        for trig in ev.triggers:
            if trig in seen:
                problems.append(f"{domain.name}/{ev.name}: trigger {trig!r} is also an entity")
        for tpl in ev.templates:
            slots = [s + d for s, d in SLOT_RE.findall(tpl)]
            if slots.count("trigger") != 1 or not set(slots) - {"trigger"} <= set(roles):
                problems.append(f"{domain.name}/{ev.name}: bad template {tpl!r}")
    for tpl in domain.mentions:
        slots = SLOT_RE.findall(tpl)
        if not slots or any(s not in types for s, _ in slots):
            problems.append(f"{domain.name}: bad mention template {tpl!r}")
    for tpl in domain.fillers:
        if SLOT_RE.search(tpl):
            problems.append(f"{domain.name}: filler {tpl!r} has a slot")
    # A form inside another form, or inside fixed template text, would make spans ambiguous.
    fixed = [SLOT_RE.sub("|", t) for t in _all_templates(domain)]
    problems += [f"{domain.name}: template {t!r} has answer punctuation" for t in fixed if re.search(r"[;:()]", t)]
    for form in seen:
        pat = re.compile(rf"(?<![\w]){re.escape(form)}(?![\w])")
        if any(pat.search(other) for other in seen if other != form):
            problems.append(f"{domain.name}: form {form!r} occurs inside another form")
        if any(pat.search(text) for text in fixed):
            problems.append(f"{domain.name}: form {form!r} occurs in template text")
    names = [r.name for r in domain.relations] + [e.name for e in domain.events]
    if len(set(names)) != len(names):
        problems.append(f"{domain.name}: duplicate relation/event names")
    return problems


def _all_templates(domain: Domain) -> list[str]:
    """Every template and filler of ``domain``, slots included."""
    out = list(domain.mentions) + list(domain.fillers)
    for rel in domain.relations:
        out.extend(rel.templates)
    for ev in domain.events:
        out.extend(ev.templates)
    return out
