"""Churn model: BG/NBD and MBG/NBD, fitted per profile, P(alive) per customer. Pure.

BG/NBD (Fader, Hardie & Lee, "Counting Your Customers the Easy Way", Marketing Science
2005): while alive, a customer buys at a Poisson rate λ ~ Gamma(r, α); after every
purchase they drop out with probability p ~ Beta(a, b). MBG/NBD (Batislam, Denizel &
Filiztekin 2007) lets the customer drop out at time 0 too, so a one-time buyer is not
surely alive. Both need per customer only

    x    repeat purchases:  distinct UTC days with a counted order, minus 1
    t_x  days from the first such day to the last
    T    days from the first such day to the UTC day of the instant of scoring

(the `lifetimes` package's summary with daily periods: whole days, so P(alive) moves only
at UTC midnights). Time unit: days. The formulas are the papers' (and `lifetimes`'):
tests/rules/test_churn.py checks them against that package to 1e-6 relative.

One module per concern, their names gathered here:

- model.py        the model's names, its parameters and a stored fit (`Fit`)
- summaries.py    a customer's (x, t_x, T), and its purchase days
- likelihood.py   the log-likelihood and its gradient
- fitting.py      maximum likelihood estimates of the parameters (`fit`)
- prediction.py   per customer: P(alive), its band, the day it falls below a bound, the
                  expected orders and the day the expected value falls below a bound;
                  `Predictor`, a fit's formulas with its terms computed once per x
- calibration.py  expected against actual repeat purchases per week (`rfm-worker model`)
- spend.py        the Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV"):
                  a customer's (x, m_x), its fit and the expected order value
- spend_check.py  predicted against actual order value in a holdout, and the correlation
                  of frequency and spend the model assumes away (`rfm-worker model`)

numpy and scipy are imported where used: every process loads the profiles (which import
this package), only those with a churn model need them (scipy.special alone takes ~0.4 s
to import).
"""

from worker.rules.churn.calibration import Week, expected_repeat, weekly_check
from worker.rules.churn.fitting import Estimate, Failed, fit
from worker.rules.churn.likelihood import log_likelihood
from worker.rules.churn.model import CHURN_MODELS, ChurnModel, Fit, Params
from worker.rules.churn.prediction import (
    band,
    day_below,
    day_value_below,
    expected_orders,
    p_alive,
    value_holds,
)
from worker.rules.churn.spend import (
    VALUE_MODELS,
    SpendFit,
    SpendParams,
    ValueModel,
    expected_order_value,
    fit_spend,
    population_mean,
    spend_log_likelihood,
    spend_summary,
    value_band,
)
from worker.rules.churn.spend_check import (
    SpendRow,
    frequency_spend_correlation,
    holdout_spend,
    spend_check,
)
from worker.rules.churn.summaries import Summary, purchase_days, summary, summary_of

__all__ = [
    "CHURN_MODELS",
    "VALUE_MODELS",
    "ChurnModel",
    "Estimate",
    "Failed",
    "Fit",
    "Params",
    "SpendFit",
    "SpendParams",
    "SpendRow",
    "Summary",
    "ValueModel",
    "Week",
    "band",
    "day_below",
    "day_value_below",
    "expected_order_value",
    "expected_orders",
    "expected_repeat",
    "fit",
    "fit_spend",
    "frequency_spend_correlation",
    "holdout_spend",
    "log_likelihood",
    "p_alive",
    "population_mean",
    "purchase_days",
    "spend_check",
    "spend_log_likelihood",
    "spend_summary",
    "summary",
    "summary_of",
    "value_band",
    "value_holds",
    "weekly_check",
]
