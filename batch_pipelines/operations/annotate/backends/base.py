"""What every annotator backend shares: the interface, the default taxonomy and the settings
an annotator reads from a batch's options."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

UNKNOWN_LANGUAGE = "unknown"
OTHER_CATEGORY = "other"


def _keywords(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


DEFAULT_TAXONOMY: dict[str, list[str]] = {
    "finance": _keywords(
        "bank, banking, market, stock, shares, investor, inflation, interest rate, "
        "revenue, profit, budget, tax, invoice, payment, price, euro, dollar, banque, "
        "marché, prix, bourse, banco, mercado, precio, inflación, geld, markt, preis, "
        "zinsen, aktien, mercato, prezzo, rente"
    ),
    "technology": _keywords(
        "software, computer, data, cloud, algorithm, network, internet, app, digital, ai, "
        "machine learning, database, server, code, developer, technologie, daten, "
        "rechenzentrum, logiciel, données, tecnología, datos, tecnologia, dati, gegevens, "
        "dados, programma"
    ),
    "sports": _keywords(
        "match, team, goal, season, league, player, coach, championship, cup, tournament, "
        "race, football, soccer, tennis, score, équipe, joueur, saison, equipo, "
        "partido, jugador, liga, mannschaft, spiel, spieler, squadra, partita, "
        "campionato, wedstrijd, ploeg, jogo"
    ),
    "health": _keywords(
        "health, patient, doctor, hospital, disease, vaccine, treatment, medical, "
        "symptom, clinic, medicine, nurse, santé, médecin, hôpital, maladie, salud, "
        "médico, hospital, enfermedad, gesundheit, arzt, krankenhaus, salute, medico, "
        "ospedale, gezondheid, ziekenhuis, saúde, doença"
    ),
    "politics": _keywords(
        "government, election, minister, parliament, policy, vote, president, law, party, "
        "senate, gouvernement, élection, ministre, gobierno, elecciones, regierung, wahl, "
        "bundestag, governo, elezioni, regering, verkiezingen, eleição"
    ),
    "science": _keywords(
        "research, study, scientist, experiment, species, climate, physics, biology, "
        "chemistry, laboratory, university, discovery, recherche, scientifique, "
        "investigación, forschung, wissenschaft, ricerca, onderzoek, wetenschap, "
        "pesquisa, cientistas, penguin, pinguïns, klimaat"
    ),
    "travel": _keywords(
        "travel, hotel, flight, airport, tourist, tourism, trip, beach, museum, voyage, "
        "vacances, viaje, turismo, reise, urlaub, viaggio, turisti, reis, viagem, "
        "ferry"
    ),
    "customer_support": _keywords(
        "order, refund, delivery, complaint, customer, support, account, password, "
        "shipping, ticket, commande, remboursement, pedido, reembolso, "
        "bestellung, lieferung, ordine, rimborso, bestelling, encomenda"
    ),
}


def settings(options: Any) -> dict[str, Any]:
    if isinstance(options, Mapping):
        raw = dict(options)
    elif hasattr(options, "model_dump"):
        raw = options.model_dump()
    else:
        raw = {}
    return {
        "taxonomy": raw.get("taxonomy") or DEFAULT_TAXONOMY,
        "max_keywords": int(raw.get("max_keywords") or 8),
        "summary_max_chars": int(raw.get("summary_max_chars") or 300),
        "summary_max_sentences": int(raw.get("summary_max_sentences") or 3),
    }


class Annotator(ABC):
    """The annotator interface: ``annotate(text, options)`` returns a dict with language,
    language_confidence, keywords, category, category_scores, summary, confidence, backend
    and model. ``options`` is the batch's annotate options (taxonomy, max_keywords,
    summary_max_chars, summary_max_sentences)."""

    @abstractmethod
    def annotate(self, text: str, options: Any = None) -> dict[str, Any]: ...

    def waits_on_io(self) -> bool:
        """Whether an annotation mostly waits (a network call) rather than computes: it
        decides the default number of items in flight."""
        return True
