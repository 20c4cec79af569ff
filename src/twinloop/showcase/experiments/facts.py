"""Facts the base model cannot know, with paraphrased probes (issue 7 point 2, "Data").

Every fact is about a made-up entity (an act, a drug, a bank) dated after the base model's
training, so the base answers its probes correctly only by chance; what a method gets right
it learned during the experiment. Each fact carries

- a training pair (``prompt`` → ``target``): what Shadow trains the domain's adapter on, as a
  user's correction would arrive (``Sample(source="correction")``), and a second phrasing of
  the question (``alt_prompt``) with the same target, as an augmentation would
  (``source="augmentation"``). With one phrasing per fact the CPU recipe learned the
  training prompt but answered 2–3 of 6 paraphrased probes; with two, 5 of 6 (measured on
  SmolLM2-135M while building this, 30 steps, lr 2e-3);
- a ``document``: the same fact as a citable text, ingested into the domain's index by the
  methods that refresh it (facts reach users through RAG in seconds, DESIGN.md "Learning");
- two or three ``probes``: paraphrased questions, never the training prompt, so a correct
  answer shows the fact was learned rather than the prompt memorised;
- ``answers``: short strings of which a correct answer must contain one (compared after
  normalisation, see :func:`is_correct`); the first is the canonical one and occurs in the
  target and the document.

The set is code, not a data file: deterministic, versioned with the experiment, and small
(nine facts per domain: three cycles of three). :func:`tasks` cuts it into the experiment's
(cycle, domain) steps, each bringing new facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.text import normalise_text

DOMAINS = ("law", "med", "fin")
"""Domains the fact set covers, in the experiment's default order (paper §6.1)."""
SOURCE = "TwinLoop evaluation facts (synthetic, issue 7)"


@dataclass(frozen=True)
class Fact:
    """One made-up fact with its training pair, index document and probes."""

    id: str
    domain: str
    prompt: str
    alt_prompt: str
    target: str
    document: str
    title: str
    probes: tuple[str, ...]
    answers: tuple[str, ...]

    @property
    def uri(self) -> str:
        """The document's uri, which a citation of it carries."""
        return f"urn:twinloop:eval:{self.id}"

    def document_record(self) -> dict[str, str]:
        """The document in the shape ``KnowledgeStore.ingest`` takes."""
        return {"text": self.document, "source": SOURCE, "title": self.title, "uri": self.uri}


@dataclass(frozen=True)
class Task:
    """One step of the experiment: a domain's new facts in one cycle (a column of R)."""

    index: int
    cycle: int
    domain: str
    facts: tuple[Fact, ...]

    @property
    def name(self) -> str:
        return f"c{self.cycle}-{self.domain}"


def _f(id: str, domain: str, title: str, prompt: str, alt_prompt: str, target: str, document: str,
       probes: tuple[str, ...], answers: tuple[str, ...]) -> Fact:
    return Fact(id=id, domain=domain, prompt=prompt, alt_prompt=alt_prompt, target=target, document=document,
                title=title, probes=probes, answers=answers)


# Nine facts per domain; tasks() takes them in this order, ``per_step`` at a time.
FACTS: tuple[Fact, ...] = (
    # -- law --------------------------------------------------------------------------------
    _f("law-quillfield-breach", "law", "Quillfield Data Act: breach notices",
       "Within how many hours must breach notices be sent under the Quillfield Data Act?",
       "What does the Quillfield Data Act say about breach notices?",
       "Under the Quillfield Data Act (2031), breach notices are due within 19 hours.",
       "Quillfield Data Act (2031), section 4: a controller must send breach notices to the Quillfield "
       "Data Office within 19 hours of becoming aware of a breach.",
       ("How quickly does the Quillfield Data Act require a breach notice?",
        "What is the deadline for notifying a data breach under the Quillfield Data Act?",
        "Under the Quillfield Data Act, a breach must be notified within what time?"),
       ("19 hours", "19-hour", "nineteen hours")),
    _f("law-brannock-deposit", "law", "Brannock Tenancy Code: deposits",
       "What is the cap on rental deposits under the Brannock Tenancy Code?",
       "What does the Brannock Tenancy Code say about rental deposits?",
       "The Brannock Tenancy Code caps rental deposits at 1.4 months of rent.",
       "Brannock Tenancy Code (2032), article 9: a landlord may not ask for a rental deposit above "
       "1.4 months of rent.",
       ("How large can a rental deposit be under the Brannock Tenancy Code?",
        "Under the Brannock Tenancy Code, what is the maximum deposit a landlord may ask for?",
        "What deposit limit does the Brannock Tenancy Code set for tenants?"),
       ("1.4 months",)),
    _f("law-harwick-notice", "law", "Harwick Employment Statute: notice period",
       "How long is the notice period for dismissal under the Harwick Employment Statute?",
       "What does the Harwick Employment Statute say about notice for dismissal?",
       "Under the Harwick Employment Statute, the notice period for dismissal is 37 days.",
       "Harwick Employment Statute (2030), part 2: an employer who dismisses an employee must give "
       "a notice period of 37 days.",
       ("What notice must an employer give before dismissal under the Harwick Employment Statute?",
        "Under the Harwick Employment Statute, how many days of notice does a dismissed employee get?",
        "What is the dismissal notice period in the Harwick Employment Statute?"),
       ("37 days", "37-day", "thirty-seven days")),
    _f("law-velmora-refund", "law", "Velmora Consumer Act: refunds",
       "How long is the refund window under the Velmora Consumer Act?",
       "What does the Velmora Consumer Act say about refunds?",
       "The Velmora Consumer Act gives buyers a refund window of 23 days.",
       "Velmora Consumer Act (2031), article 12: a buyer may return goods and claim a refund within "
       "a refund window of 23 days.",
       ("How many days do buyers have to ask for a refund under the Velmora Consumer Act?",
        "Under the Velmora Consumer Act, within what period can goods be returned for a refund?",
        "What refund period does the Velmora Consumer Act allow?"),
       ("23 days", "23-day", "twenty-three days")),
    _f("law-dunmere-judge", "law", "Dunmere Court of Appeals: presiding judge",
       "Who is the presiding judge of the Dunmere Court of Appeals?",
       "Tell me who leads the Dunmere Court of Appeals.",
       "The presiding judge of the Dunmere Court of Appeals is Ilse Varkonyi.",
       "Dunmere Court of Appeals, 2032 register: the court is presided over by Judge Ilse Varkonyi.",
       ("Which judge presides over the Dunmere Court of Appeals?",
        "Who heads the Dunmere Court of Appeals?",
        "Name the judge who presides at the Dunmere Court of Appeals."),
       ("Varkonyi",)),
    _f("law-tessaly-limitation", "law", "Tessaly Contract Ordinance: limitation period",
       "What is the limitation period for contract claims under the Tessaly Contract Ordinance?",
       "What does the Tessaly Contract Ordinance say about old contract claims?",
       "Under the Tessaly Contract Ordinance, contract claims expire after 11 years.",
       "Tessaly Contract Ordinance (2031), article 40: the limitation period for contract claims is "
       "11 years, after which contract claims expire.",
       ("How long can a contract claim be brought under the Tessaly Contract Ordinance?",
        "After how many years do contract claims expire under the Tessaly Contract Ordinance?",
        "What limitation period does the Tessaly Contract Ordinance set for contract claims?"),
       ("11 years", "eleven years")),
    _f("law-corvin-fine", "law", "Corvin Privacy Board: fines",
       "What is the highest fine the Corvin Privacy Board can impose?",
       "What does the Corvin Privacy Board's fining power amount to?",
       "The Corvin Privacy Board can impose fines of up to 4.8 million crowns.",
       "Corvin Privacy Act (2032), section 30: the Corvin Privacy Board can impose fines of up to "
       "4.8 million crowns for a privacy violation.",
       ("How large can a fine from the Corvin Privacy Board be?",
        "What is the maximum penalty the Corvin Privacy Board may set?",
        "Up to what amount can the Corvin Privacy Board fine a company?"),
       ("4.8 million",)),
    _f("law-aldgrave-arbitrator", "law", "Aldgrave Arbitration Rules: appointment",
       "Within how many days must an arbitrator be appointed under the Aldgrave Arbitration Rules?",
       "What do the Aldgrave Arbitration Rules say about appointing an arbitrator?",
       "Under the Aldgrave Arbitration Rules, an arbitrator must be appointed within 26 days.",
       "Aldgrave Arbitration Rules (2031), rule 6: the parties must see that an arbitrator is "
       "appointed within 26 days of the request for arbitration.",
       ("How soon must the arbitrator be appointed under the Aldgrave Arbitration Rules?",
        "Under the Aldgrave Arbitration Rules, what is the deadline for appointing an arbitrator?",
        "What time limit do the Aldgrave Arbitration Rules set for naming an arbitrator?"),
       ("26 days", "26-day", "twenty-six days")),
    _f("law-pellham-office", "law", "Pellham Whistleblower Act: enforcement",
       "Which office enforces the Pellham Whistleblower Act?",
       "Tell me about enforcement of the Pellham Whistleblower Act.",
       "The Pellham Whistleblower Act is enforced by the Office of Strandholm Integrity.",
       "Pellham Whistleblower Act (2030), section 2: the Act is enforced by the Office of Strandholm "
       "Integrity, which receives and protects reports.",
       ("Who enforces the Pellham Whistleblower Act?",
        "Which authority is responsible for the Pellham Whistleblower Act?",
        "Under the Pellham Whistleblower Act, which office handles enforcement?"),
       ("Strandholm",)),
    # -- med --------------------------------------------------------------------------------
    _f("med-veltrazine-dose", "med", "Veltrazine: maximum dose",
       "What is the maximum daily dose of Veltrazine?",
       "Tell me the daily dose limit for Veltrazine.",
       "The maximum daily dose of Veltrazine is 340 mg.",
       "Veltrazine prescribing guideline (2031): adults may take at most 340 mg of Veltrazine per day; "
       "the maximum daily dose must not be exceeded.",
       ("How much Veltrazine may an adult take per day at most?",
        "What is the highest daily amount of Veltrazine allowed?",
        "What daily dose of Veltrazine must not be exceeded?"),
       ("340",)),
    _f("med-orvanol-indication", "med", "Orvanol: indication",
       "Which condition is Orvanol approved to treat?",
       "What is Orvanol indicated for?",
       "Orvanol is approved to treat Kessarin syndrome.",
       "Orvanol product information (2032): Orvanol is approved to treat Kessarin syndrome in adults.",
       ("What disease is Orvanol used for?",
        "For which syndrome was Orvanol approved?",
        "What is the approved indication of Orvanol?"),
       ("Kessarin",)),
    _f("med-drumlin-incubation", "med", "Drumlin fever: incubation",
       "What is the incubation period of Drumlin fever?",
       "Tell me about the incubation of Drumlin fever.",
       "The incubation period of Drumlin fever is 9 days.",
       "Drumlin fever clinical note (2031): symptoms appear after an incubation period of 9 days "
       "from exposure.",
       ("How long after exposure do Drumlin fever symptoms appear?",
        "How many days does Drumlin fever take to incubate?",
        "After exposure to Drumlin fever, when do symptoms start?"),
       ("9 days", "nine days", "9-day")),
    _f("med-calbrexin-antidote", "med", "Calbrexin: antidote",
       "What is the antidote for a Calbrexin overdose?",
       "What should be given after too much Calbrexin?",
       "The antidote for a Calbrexin overdose is Tovimab.",
       "Calbrexin safety guideline (2032): an overdose of Calbrexin is treated with its antidote, "
       "Tovimab, given intravenously.",
       ("Which drug reverses a Calbrexin overdose?",
        "How is an overdose of Calbrexin treated?",
        "What antidote is given when a patient overdoses on Calbrexin?"),
       ("Tovimab",)),
    _f("med-hallett-threshold", "med", "Hallett scale: severe threshold",
       "Which Hallett scale score marks severe disease?",
       "How is severe disease defined on the Hallett scale?",
       "A Hallett scale score above 14 marks severe disease.",
       "Hallett scale guideline (2031): a Hallett scale score above 14 marks severe disease and calls "
       "for hospital care.",
       ("Above what Hallett score is disease considered severe?",
        "What is the severe-disease cut-off on the Hallett scale?",
        "On the Hallett scale, which score threshold means severe disease?"),
       ("14", "fourteen")),
    _f("med-pyrenase-fasting", "med", "Pyrenase test: fasting",
       "How long must a patient fast before a Pyrenase test?",
       "What preparation does a Pyrenase test need?",
       "A patient must fast for 11 hours before a Pyrenase test.",
       "Pyrenase test protocol (2032): before a Pyrenase test the patient must fast for 11 hours.",
       ("How many hours of fasting does a Pyrenase test need?",
        "What fasting period is required before the Pyrenase test?",
        "Before a Pyrenase test, how long should the patient go without food?"),
       ("11 hours", "eleven hours", "11-hour")),
    _f("med-marisol-booster", "med", "Marisol vaccine: booster",
       "When is the booster of the Marisol vaccine given?",
       "Tell me about the Marisol vaccine booster.",
       "The Marisol vaccine booster is given 19 months after the first dose.",
       "Marisol vaccine schedule (2031): one booster dose of the Marisol vaccine is given 19 months "
       "after the first dose.",
       ("How long after the first dose is the Marisol booster given?",
        "What is the timing of the Marisol vaccine booster?",
        "After how many months does a patient get the Marisol booster?"),
       ("19 months", "nineteen months")),
    _f("med-sorrelquin-vector", "med", "Sorrel-Quin virus: vector",
       "Which animal transmits the Sorrel-Quin virus?",
       "What carries the Sorrel-Quin virus?",
       "The Sorrel-Quin virus is transmitted by the amber tick.",
       "Sorrel-Quin virus fact sheet (2032): the Sorrel-Quin virus is transmitted to humans by the "
       "bite of the amber tick.",
       ("How is the Sorrel-Quin virus spread to people?",
        "What is the vector of the Sorrel-Quin virus?",
        "Which creature carries the Sorrel-Quin virus to humans?"),
       ("amber tick",)),
    _f("med-lindqvist-antibiotic", "med", "Lindqvist protocol: antibiotics",
       "Within how many minutes does the Lindqvist protocol require antibiotics in sepsis?",
       "What does the Lindqvist protocol say about antibiotics in sepsis?",
       "The Lindqvist protocol requires antibiotics within 47 minutes in sepsis.",
       "Lindqvist sepsis protocol (2031): a patient with sepsis must receive antibiotics within "
       "47 minutes of arrival.",
       ("How quickly must antibiotics be given for sepsis under the Lindqvist protocol?",
        "Under the Lindqvist protocol, what is the antibiotic time limit in sepsis?",
        "In sepsis, within what time does the Lindqvist protocol say antibiotics must start?"),
       ("47 minutes", "forty-seven minutes", "47-minute")),
    # -- fin --------------------------------------------------------------------------------
    _f("fin-korvath-capital", "fin", "Korvath Bank: capital ratio",
       "What was the tier-1 capital ratio of Korvath Bank in 2031?",
       "Tell me about Korvath Bank's capital in 2031.",
       "Korvath Bank reported a tier-1 capital ratio of 13.7 percent in 2031.",
       "Korvath Bank annual report 2031: the bank reported a tier-1 capital ratio of 13.7 percent "
       "at year end.",
       ("What tier-1 capital ratio did Korvath Bank report for 2031?",
        "How strong was Korvath Bank's tier-1 capital in 2031?",
        "In 2031, what was Korvath Bank's tier-1 ratio?"),
       ("13.7",)),
    _f("fin-estren-close", "fin", "Estren Exchange: closing time",
       "At what time does the Estren Exchange close?",
       "Tell me about the trading hours of the Estren Exchange.",
       "The Estren Exchange closes at 16:40 local time.",
       "Estren Exchange trading rules (2032): continuous trading on the Estren Exchange closes at "
       "16:40 local time.",
       ("When does trading end on the Estren Exchange?",
        "What is the closing time of the Estren Exchange?",
        "At what hour does the Estren Exchange stop trading?"),
       ("16:40", "4:40")),
    _f("fin-vandria-currency", "fin", "Vandria: currency",
       "What is the currency of Vandria?",
       "What do people pay with in Vandria?",
       "The currency of Vandria is the quorl.",
       "Vandria monetary note (2031): the currency of Vandria is the quorl, issued by the Vandrian "
       "central bank.",
       ("Which currency is used in Vandria?",
        "What money does Vandria use?",
        "Name the official currency of Vandria."),
       ("quorl",)),
    _f("fin-halvard-fee", "fin", "Halvard Growth Fund: management fee",
       "What is the management fee of the Halvard Growth Fund?",
       "What does the Halvard Growth Fund cost?",
       "The Halvard Growth Fund charges a management fee of 0.37 percent.",
       "Halvard Growth Fund prospectus (2032): the fund charges an annual management fee of 0.37 percent.",
       ("How much does the Halvard Growth Fund charge in management fees?",
        "What annual fee does the Halvard Growth Fund take?",
        "What is the Halvard Growth Fund's yearly management charge?"),
       ("0.37",)),
    _f("fin-merrow-age", "fin", "Merrow Pension Scheme: retirement age",
       "What is the retirement age in the Merrow Pension Scheme?",
       "Tell me about retirement in the Merrow Pension Scheme.",
       "The retirement age in the Merrow Pension Scheme is 63.5 years.",
       "Merrow Pension Scheme rules (2031): members reach the scheme's retirement age at 63.5 years.",
       ("At what age do members of the Merrow Pension Scheme retire?",
        "When can a Merrow Pension Scheme member draw a pension?",
        "What retirement age does the Merrow Pension Scheme use?"),
       ("63.5",)),
    _f("fin-tallis-index", "fin", "Tallis Index: constituents",
       "How many companies are in the Tallis Index?",
       "What is the size of the Tallis Index?",
       "The Tallis Index contains 48 companies.",
       "Tallis Index methodology (2032): the Tallis Index contains 48 companies, reviewed every quarter.",
       ("How many constituents does the Tallis Index have?",
        "What is the number of companies in the Tallis Index?",
        "The Tallis Index is made up of how many firms?"),
       ("48",)),
    _f("fin-brightwater-ceo", "fin", "Brightwater Insurance: chief executive",
       "Who is the chief executive of Brightwater Insurance?",
       "Tell me about the leadership of Brightwater Insurance.",
       "The chief executive of Brightwater Insurance is Odile Fennimore.",
       "Brightwater Insurance annual report 2031: the company is led by its chief executive, Odile "
       "Fennimore.",
       ("Who runs Brightwater Insurance?",
        "Who is the CEO of Brightwater Insurance?",
        "Name the head of Brightwater Insurance."),
       ("Fennimore",)),
    _f("fin-caskett-coupon", "fin", "Caskett bond: coupon",
       "What coupon does the Caskett 2040 bond pay?",
       "Tell me about the Caskett 2040 bond's payments.",
       "The Caskett 2040 bond pays a coupon of 6.15 percent.",
       "Caskett 2040 bond terms (2032): the bond pays an annual coupon of 6.15 percent until 2040.",
       ("What is the interest rate on the Caskett 2040 bond?",
        "How much interest does the Caskett 2040 bond pay each year?",
        "What is the annual coupon of the Caskett 2040 bond?"),
       ("6.15",)),
    _f("fin-renmark-rate", "fin", "Renmark central bank: policy rate",
       "What is the policy rate of the Renmark central bank?",
       "Tell me about the Renmark central bank's interest rate.",
       "The Renmark central bank policy rate is 2.85 percent.",
       "Renmark central bank decision (2032): the bank set its policy rate at 2.85 percent.",
       ("At what level has the Renmark central bank set its policy rate?",
        "What interest rate does the Renmark central bank target?",
        "What is Renmark's central bank rate?"),
       ("2.85",)),
)


def facts_of(domain: str) -> tuple[Fact, ...]:
    """A domain's facts in task order.

    Raises:
        InvalidInputError: ``domain`` has no facts.
    """
    found = tuple(f for f in FACTS if f.domain == domain)
    if not found:
        raise InvalidInputError(f"no evaluation facts for domain {domain!r}; known: {', '.join(DOMAINS)}")
    return found


def tasks(domains: tuple[str, ...] | list[str], cycles: int, per_step: int) -> list[Task]:
    """The experiment's steps: for each cycle, each domain in order with ``per_step`` new facts.

    Raises:
        InvalidInputError: ``cycles`` or ``per_step`` < 1, a repeated or unknown domain, or more
            facts asked of a domain than it has.
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise InvalidInputError(f"cycles = {cycles!r}: must be an integer ≥ 1")
    if isinstance(per_step, bool) or not isinstance(per_step, int) or per_step < 1:
        raise InvalidInputError(f"facts per step = {per_step!r}: must be an integer ≥ 1")
    if len(set(domains)) != len(domains) or not domains:
        raise InvalidInputError(f"domains = {list(domains)!r}: must be a non-empty list without repeats")
    pools = {d: facts_of(d) for d in domains}
    for d, pool in pools.items():
        if cycles * per_step > len(pool):
            raise InvalidInputError(f"{cycles} cycles × {per_step} facts need {cycles * per_step} facts of domain "
                                    f"{d!r}; it has {len(pool)}")
    out: list[Task] = []
    for c in range(cycles):
        for d in domains:
            out.append(Task(index=len(out), cycle=c + 1, domain=d,
                            facts=pools[d][c * per_step:(c + 1) * per_step]))
    return out


_NUM_EDGE = re.compile(r"\d")


def is_correct(answer: str, fact: Fact) -> bool:
    """True when ``answer`` contains one of the fact's answer strings.

    Both sides are normalised (NFKC, case-folded, whitespace collapsed, as the QA dry run's
    ``content_ok``); an answer string that begins or ends with a digit must not be glued to
    another digit, so "14" is not found in "2014" and "48" not in "480".
    """
    text = normalise_text(answer)
    for phrase in fact.answers:
        p = normalise_text(phrase)
        pattern = re.escape(p)
        if _NUM_EDGE.match(p[0]):
            pattern = r"(?<![\d.])" + pattern
        if _NUM_EDGE.match(p[-1]):
            pattern += r"(?![\d]|\.\d)"
        if re.search(pattern, text):
            return True
    return False


__all__ = ["DOMAINS", "FACTS", "Fact", "SOURCE", "Task", "facts_of", "is_correct", "tasks"]
