"""What a question asks for (an age, a period, a rate, a figure) and whether a text gives it."""

from __future__ import annotations

import pytest

from twinloop.knowledge.terms import names
from twinloop.serving.asked import gives_any, has_quantity, not_given, wanted

CASES = [
    # (question, text, forms the text does not give)
    ("Wie alt muss man sein, um Bundespräsident zu werden?",
     "Wählbar ist jeder Deutsche, der das vierzigste Lebensjahr vollendet hat.", []),
    ("Wie alt muss man sein, um Bundespräsident zu werden?", "Die Bundesbeauftragte muss das 35. Lebensjahr "
                                                             "vollendet haben.", []),
    ("Wie alt muss man sein, um Bundespräsident zu werden?", "Der Bundespräsident wird ohne Aussprache gewählt.",
     ["an age"]),
    ("At what age may a child consent on its own?", "The child is at least 16 years old.", []),
    ("At what age may a child consent on its own?", "Consent must be given by the holder of parental "
                                                    "responsibility.", ["an age"]),
    ("How long is the Skarrow Bridge?", "The bridge is 1.8 kilometres long.", []),
    ("To which mountain range does Mount Idravoy belong?", "It belongs to the Skaldric Range.", []),
    ("Roughly what fraction of people get it?", "About 1 in 40,000 people.", []),
    ("At what age does the syndrome appear?", "It appears in early childhood.", []),
    ("How long must records be kept?", "Records are kept for all tenants and all years.", ["a period or a length"]),
    ("Wie alt muss man sein, um gewählt zu werden?", "Das gilt, wenn die Vorlage nicht innerhalb von vier Wochen "
                                                      "verabschiedet wird.", ["an age"]),
    ("By what age must a puppy be registered?", "Puppies must be registered by the age of four months.", []),
    ("What is the maximum prison sentence under the act?", "Offenders face up to five years.", []),
    ("How much do lawyers pay for a certificate?", "The board charges €1,150 for a certificate.", []),
    ("How quickly must a processor tell the controller?", "The processor shall notify the controller without "
                                                          "undue delay.", []),
    ("Wie lange genießt er danach Kündigungsschutz?", "Die Kündigung ist innerhalb eines Jahres unzulässig.", []),
    ("What is the shortest term of office of a member?", "Each member shall be appointed for no less than four "
                                                         "years.", []),
    ("What is the shortest term of office of a member?", "Members shall be appointed by a transparent procedure.",
     ["a period or a length"]),
    ("Wie oft kann man eine kostenlose Auskunft verlangen?", "Die Auskunft ist einmal je Kalenderjahr "
                                                             "unentgeltlich.", []),
    ("How often must the report be filed?", "The report is filed twice a year.", []),
    ("How often must the report be filed?", "The normal and maximal duties of the board apply.", ["a frequency"]),
    ("Bis zu welcher Quote sind Kredite zulässig?", "Die Einnahmen überschreiten 0,35 vom Hundert nicht.", []),
    ("What percentage of patients relapsed?", "Relapse occurred in 12% of patients.", []),
    ("What percentage of patients relapsed?", "Relapse occurred in many patients.", ["a percentage or share"]),
    ("Mit welcher Freiheitsstrafe wird das bedroht?", "Wer so handelt, wird mit Freiheitsstrafe bis zu zwei "
                                                      "Jahren oder mit Geldstrafe bestraft.", []),
    ("Mit welcher Freiheitsstrafe wird das bedroht?", "Die Tat wird nur auf Antrag verfolgt.",
     ["a term of imprisonment"]),
    ("How much has the plan cost in special charges?", "Since inception, $41.9 million has been recorded.", []),
    ("How much did the company pay to acquire TOKIN?", "$0.9 million in costs incurred during the relocation.",
     ["an amount paid"]),
    ("Wie lange muss er die Auskunft aufbewahren?", "Er darf sie nur solange verweigern, wie es nötig ist.",
     ["a period or a length"]),
    ("In welcher Form muss die Einwilligung erfolgen?", "Die Einwilligung bedarf der Schriftform.", []),
    ("In welcher Form muss die Einwilligung erfolgen?", "Der Verantwortliche muss die Einwilligung nachweisen.",
     ["a form of declaration"]),
    ("Which temperature range do the guidelines prescribe?", "Keep vaccines between 2 and 8 °C.", []),
    ("Which temperature range do the guidelines prescribe?", "Fridges reached temperatures up to 16 degrees C.",
     ["a range"]),
    ("In welchem Temperaturbereich ist der Impfstoff zu lagern?", "Lagerung bei 2–8 °C.", []),
    ("In which country was the first patient infected?", "The initial case was certainly infected in Zambia.", []),
    ("In which country was the first patient infected?", "The disease occurs in southern Africa.", ["a country"]),
    ("In welchem Land hat das Unternehmen seinen Sitz?", "Der Sitz ist in Österreich.", []),
    # A number in a provision's name is not a figure.
    ("How many members does the Board have?", "The Board acts under Article 68 members' rules and Directive "
                                               "95/46/EC.", ["a number of members"]),
    ("Wie viele Mitglieder hat der Rat?", "Er handelt nach § 12 Abs. 1 Satz 2 Nr. 3 mit seinen Mitgliedern.",
     ["a number of Mitglieder"]),
    ("Wie viele Abgeordnete hat der Bundestag?", "Er entscheidet, ob ein Abgeordneter die Mitgliedschaft verliert.",
     ["a number of Abgeordnete"]),
    ("What is the number of members?", "See Article 68(3) and Directive 95/46/EC.", ["a figure"]),
    ("Wie viele Mitglieder hat der Rat?", "Der Rat hat nach § 12 fünf Mitglieder.", []),
    # People are counted by any word for people: a study of men reports "24 patients".
    ("How many men showed biochemical failure?", "Only 24 patients (12%) had eventual evidence of failure.", []),
    ("Wie viele Menschen erkranken jährlich?", "Jährlich erkranken etwa 500 Personen.", []),
    ("How many men showed biochemical failure?", "The failure was seen in 12 nomograms.", ["a number of men"]),
    # A question that names its answer's unit asks for a figure.
    ("What was EBIT in fiscal 2019, in € million?", "EBIT rose on higher margins.", ["a figure"]),
    ("What was EBIT in fiscal 2019, in € million?", "EBIT | 713 | 828", []),
    # Near misses: another currency, a maximum for a minimum, a date for a salary, a mean for a
    # median, a count of patients for a mortality, money for a headcount.
    ("What is the maximum GDPR fine expressed in dollars?", "Fines up to 20 000 000 EUR.", ["an amount in dollars"]),
    ("What is the maximum fine expressed in dollars?", "A fine of $22 million.", []),
    ("What is the minimum administrative fine under Article 83?", "Fines up to 20 000 000 EUR.", ["a minimum"]),
    ("What is the minimum administrative fine?", "A fine of at least 500 EUR.", []),
    ("Wie hoch ist das Gehalt des Bundespräsidenten?", "Die ab dem 1. Januar 2020 geltende Fassung.",
     ["a sum of money"]),
    ("What annual revenue did Automated Packaging generate?", "It acquired 100% on August 1, 2019.",
     ["a sum of money"]),
    ("What annual revenue did Automated Packaging generate?", "It had annual sales of $240 million.", []),
    ("What was revenue in 2019?", "Revenue | 1,234 | 1,456", []),
    ("What share of consolidated revenues did the top ten clients account for?", "They accounted for 32%.", []),
    ("What was the median survival of the residents?", "Mean survival was 5 months.", ["a median"]),
    ("What was the mortality among patients with pancreatitis?", "Forty five consecutive patients were studied.",
     ["a mortality"]),
    ("What was the mortality among patients with pancreatitis?", "Two patients died (4%).", []),
    ("How many employees lost their jobs?", "Charges included $39.2 million in employee termination benefits.",
     ["a number of employees"]),
    ("How many employees lost their jobs?", "The plan affected about 3 million employees.", []),
    # No particular form asked: nothing to check.
    ("What does the Board do?", "The Board issues guidelines.", []),
]


@pytest.mark.parametrize(("question", "text", "missing"), CASES, ids=[f"{i}-{c[0][:30]}" for i, c in enumerate(CASES)])
def test_what_a_text_does_not_give(question, text, missing):
    assert not_given(question, text) == missing
    assert gives_any(question, text) == (not missing or len(missing) < len(wanted(question)))


def test_a_question_asking_two_forms_is_given_one_by_one():
    q = "Wie lange dauert die Amtszeit, und wie oft ist Wiederwahl zulässig?"
    assert wanted(q) == ["a period or a length", "a frequency"]
    assert not_given(q, "Die Amtszeit dauert fünf Jahre.") == ["a frequency"]
    assert gives_any(q, "Die Amtszeit dauert fünf Jahre.") and not gives_any(q, "Die Wahl ist geheim.")


@pytest.mark.parametrize(("text", "held"), [
    ("Article 6(1) and Directive 95/46/EC", False),
    ("§ 33 Abs. 2 Satz 1 Nr. 2, 3 und 5", False),
    ("Verordnung (EU) 2016/679", False),
    ("within 72 hours", True),
    ("zwei Dritteln der Mitglieder", True),
    ("Article 83(5): up to EUR 20 000 000", True),
])
def test_a_provision_number_is_not_a_quantity(text, held):
    assert has_quantity(text) is held


@pytest.mark.parametrize(("question", "kept", "dropped"), [
    ("According to Article 33(2) GDPR, how quickly must a processor act?", set(), {"33", "2"}),
    ("Was bestimmte Artikel 21 Absatz 3 des Grundgesetzes?", set(), {"21", "3"}),
    ("What did Kemet pay for 34% of TOKIN?", {"kemet", "tokin", "34"}, set()),
])
def test_the_parts_of_a_cited_provision_are_not_names(question, kept, dropped):
    got = names(question)
    assert kept <= got and not dropped & got
