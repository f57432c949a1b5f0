"""Deterministic synthetic demo shop for segsrv (``segsrv demo-data``).

A Nordic pet-supplies retailer with five Parquet tables (customers, products,
orders, order_lines, events) plus a ``spec.toml`` describing them for the
snapshot builder.  Everything is generated with vectorised numpy from one
``numpy.random.SeedSequence(seed)``, so the same ``(n_customers, seed)`` gives
byte-identical files (for the same numpy/pyarrow versions).

Behavioural patterns with known lifts are planted on purpose; they are listed,
with the SQL that measures them, in docs/demo.md.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["generate_demo", "SCHEMAS"]

# ---------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------

REGIONS = ["capital", "north", "south", "east", "west", "islands", "lakeland"]
REGION_P = [0.27, 0.12, 0.18, 0.13, 0.15, 0.06, 0.09]
R_NORTH = REGIONS.index("north")  # grain-free dry food hot spot
R_ISLANDS = REGIONS.index("islands")  # high-churn region

BANDS = ["low", "mid", "high", "vip"]
BAND_CUM = [0.40, 0.72, 0.92]  # quantile cut points of the band score

SIGNUP = ["web", "app", "store", "referral"]
SIGNUP_P = [0.45, 0.30, 0.15, 0.10]

PETS = ["dog", "cat", "dog+cat", "small_animal", "fish", "none"]
PET_P = [0.34, 0.27, 0.12, 0.08, 0.06, 0.13]

ORDER_CHANNELS = ["web", "app", "store"]
# order channel | signup channel (rows follow SIGNUP)
ORDER_CHANNEL_P = np.array(
    [
        [0.72, 0.18, 0.10],  # web
        [0.22, 0.70, 0.08],  # app
        [0.30, 0.12, 0.58],  # store
        [0.50, 0.35, 0.15],  # referral
    ]
)

N_MONTHS = 24
MONTHS = [f"{2023 + i // 12}-{i % 12 + 1:02d}" for i in range(N_MONTHS)]  # 2023-01 .. 2024-12

TIERS = ["value", "standard", "premium"]

# (category, base price, assortment weight, return multiplier)
CATEGORIES = [
    ("dog-dryfood", 34.0, 3.0, 0.5),
    ("dog-wetfood", 11.0, 2.5, 0.5),
    ("dog-dentaltreat", 7.5, 1.0, 0.6),
    ("dog-treat", 5.5, 2.0, 0.5),
    ("dog-toy", 9.0, 2.0, 1.6),
    ("dog-bed", 55.0, 1.0, 2.2),
    ("dog-leash", 18.0, 1.0, 1.8),
    ("dog-shampoo", 11.0, 0.8, 0.8),
    ("dog-supplement", 24.0, 0.8, 0.7),
    ("cat-dryfood", 28.0, 2.5, 0.5),
    ("cat-wetfood", 9.0, 2.5, 0.5),
    ("cat-litter", 14.0, 1.2, 0.6),
    ("cat-treat", 4.5, 1.5, 0.5),
    ("cat-toy", 7.0, 1.5, 1.6),
    ("cat-scratcher", 32.0, 0.8, 2.0),
    ("cat-dentaltreat", 6.5, 0.6, 0.6),
    ("small_animal-food", 8.0, 1.0, 0.5),
    ("small_animal-bedding", 7.5, 0.6, 0.8),
    ("small_animal-cage", 70.0, 0.5, 2.4),
    ("fish-food", 5.0, 0.8, 0.5),
    ("fish-aquarium", 95.0, 0.5, 2.4),
    ("fish-filter", 35.0, 0.5, 1.8),
]
CAT_NAMES = [c[0] for c in CATEGORIES]
N_CAT = len(CATEGORIES)
CI = {name: i for i, name in enumerate(CAT_NAMES)}
FOOD_CATS = ["dog-dryfood", "dog-wetfood", "dog-treat", "cat-dryfood", "cat-wetfood", "cat-treat"]
IS_FOOD = np.zeros(N_CAT, dtype=bool)
IS_FOOD[[CI[c] for c in FOOD_CATS]] = True
# what a subscription order may contain (consumables)
IS_CONSUMABLE = IS_FOOD.copy()
IS_CONSUMABLE[[CI[c] for c in ("cat-litter", "small_animal-food", "small_animal-bedding", "fish-food")]] = True

BRANDS = [
    # premium
    ("Fjordkind", 2), ("Nordvit", 2), ("Arctic Origin", 2), ("Vildmark", 2),
    ("Saga Select", 2), ("Boreal Pure", 2), ("Lumo Vet", 2),
    # standard
    ("Polarpet", 1), ("Nordpaw", 1), ("Hygge Pets", 1), ("Skog & Co", 1),
    ("Tass", 1), ("Bjork", 1), ("Fenja", 1), ("Kattvenn", 1),
    ("Hundeliv", 1), ("Sjoby", 1), ("Aurora Pets", 1), ("Kvist", 1),
    # value
    ("PetBasic", 0), ("Smart Buy", 0), ("Budget Bowl", 0), ("Everyday", 0),
    ("Nordic Value", 0), ("Koppen", 0), ("Sparpris", 0), ("Happy Tail", 0),
    ("Krumme", 0), ("Fido Plus", 0), ("Mjau", 0),
]

TAGS = ["grain-free", "organic", "hypoallergenic", "senior", "puppy", "kitten",
        "sensitive", "vet-approved", "eco"]

FILTERS = ["grain-free", "organic", "premium", "price<20", "hypoallergenic", "in-stock"]
# rows: non-seeker low/mid band, non-seeker high/vip band, seeker low/mid, seeker high/vip
FILTER_P = np.array(
    [
        [0.02, 0.21, 0.10, 0.37, 0.10, 0.20],
        [0.03, 0.26, 0.29, 0.13, 0.11, 0.18],
        [0.68, 0.10, 0.08, 0.06, 0.05, 0.03],
        [0.70, 0.10, 0.10, 0.02, 0.05, 0.03],
    ]
)

EVENT_TYPES = ["view", "search", "filter", "add_to_cart"]
EVENT_P = np.array(
    [
        [0.58, 0.16, 0.08, 0.18],  # non-seeker
        [0.42, 0.11, 0.35, 0.12],  # grain-free seeker
    ]
)

SEARCH_TERMS_BY_PET = {
    "dog": ["dog food", "puppy food", "dental sticks", "chew toy", "dog bed", "leash",
            "grain free dog food"],
    "cat": ["cat food", "kitten food", "cat litter", "scratching post", "cat treats",
            "grain free cat food"],
    "small_animal": ["rabbit food", "hay", "hamster cage", "bedding"],
    "fish": ["fish food", "aquarium", "aquarium filter"],
    "none": ["gift card", "pet gifts", "dog food", "cat food"],
}
SEARCH_TERMS = sorted({t for v in SEARCH_TERMS_BY_PET.values() for t in v})

# Table schemas (column -> arrow type), documented in docs/demo.md.
SCHEMAS: dict[str, pa.Schema] = {
    "customers": pa.schema([
        ("customer_id", pa.int64()), ("region", pa.string()),
        ("lifetime_value_band", pa.string()), ("signup_channel", pa.string()),
        ("age", pa.int32()), ("tenure_months", pa.int32()), ("pet_type", pa.string()),
        ("newsletter", pa.bool_()), ("churned", pa.bool_()),
    ]),
    "products": pa.schema([
        ("product_id", pa.int64()), ("name", pa.string()), ("category", pa.string()),
        ("brand", pa.string()), ("brand_tier", pa.string()), ("tag", pa.string()),
        ("price", pa.float64()),
    ]),
    "orders": pa.schema([
        ("order_id", pa.int64()), ("customer_id", pa.int64()), ("order_month", pa.string()),
        ("channel", pa.string()), ("subscription", pa.bool_()), ("total", pa.float64()),
    ]),
    "order_lines": pa.schema([
        ("line_id", pa.int64()), ("order_id", pa.int64()), ("customer_id", pa.int64()),
        ("product_id", pa.int64()), ("qty", pa.int32()), ("unit_price", pa.float64()),
        ("returned", pa.bool_()),
    ]),
    "events": pa.schema([
        ("event_id", pa.int64()), ("customer_id", pa.int64()), ("event_type", pa.string()),
        ("product_id", pa.int64()), ("filter", pa.string()), ("search_term", pa.string()),
    ]),
}

ROW_GROUP_SIZE = 1_000_000
PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=True,
    write_statistics=True,
    row_group_size=ROW_GROUP_SIZE,
)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _cdf_rows(p: np.ndarray) -> np.ndarray:
    """Row-normalised cumulative table of a (G, K) weight matrix (last column exactly 1)."""
    p = np.asarray(p, dtype=np.float64)
    c = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    c[:, -1] = 1.0
    return c


def _sample_rows(rng: np.random.Generator, cdf: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Draw one category per element: element i uses row ``group[i]`` of ``cdf``.

    Vectorised inverse-CDF over all rows at once: row g's cumulative values are
    shifted into (g, g+1] and one searchsorted finds every draw.
    """
    g_count, k = cdf.shape
    flat = (cdf + np.arange(g_count)[:, None]).ravel()
    g = np.asarray(group, dtype=np.int64)
    x = g + rng.random(g.shape[0])
    idx = np.searchsorted(flat, x, side="right") - g * k
    np.clip(idx, 0, k - 1, out=idx)
    return idx


def _strings(codes: np.ndarray, labels: list[str], mask: np.ndarray | None = None) -> pa.Array:
    """A plain ``string`` arrow array from integer codes into ``labels`` (mask = null)."""
    idx = pa.array(np.asarray(codes, dtype=np.int32), mask=mask)
    return pa.DictionaryArray.from_arrays(idx, pa.array(labels, pa.string())).cast(pa.string())


def _write(table: pa.Table, path: pathlib.Path) -> None:
    pq.write_table(table, str(path), **PARQUET_OPTIONS)


def _n_products(n_customers: int) -> int:
    return int(min(5000, max(500, 1000 + n_customers // 250)))


# ---------------------------------------------------------------------------
# Products
# ---------------------------------------------------------------------------


class _Catalog:
    """Products grouped contiguously by (category, tier, grain_free) for fast picks."""

    def __init__(self, rng: np.random.Generator, n_target: int):
        cat_w = np.array([c[2] for c in CATEGORIES])
        tier_share = np.array([0.35, 0.40, 0.25])
        gf_share = np.array([0.08, 0.25, 0.60])  # share of grain-free food products per tier
        cnt = np.round(n_target * (cat_w / cat_w.sum())[:, None] * tier_share[None, :]).astype(np.int64)
        min_cnt = np.where(IS_FOOD, 4, 2)[:, None]
        cnt = np.maximum(cnt, min_cnt)  # (C, 3)
        n_gf = np.where(
            IS_FOOD[:, None],
            np.clip(np.round(cnt * gf_share[None, :]), 1, cnt - 1),
            0,
        ).astype(np.int64)
        # group counts in key order (c, t, gf): key = (c * 3 + t) * 2 + gf
        grp = np.stack([cnt - n_gf, n_gf], axis=-1).reshape(-1)  # (C*3*2,)
        keys = np.arange(grp.size)
        key = np.repeat(keys, grp)
        n = key.size
        self.n = n
        self.cat = key // 6
        self.tier = (key // 2) % 3
        self.gf = (key % 2).astype(bool)

        # brand: uniform among the tier's brands
        brand_tier = np.array([b[1] for b in BRANDS])
        by_tier = [np.flatnonzero(brand_tier == t) for t in range(3)]
        width = max(len(b) for b in by_tier)
        table = np.full((3, width), -1, dtype=np.int64)
        n_in = np.array([len(b) for b in by_tier])
        for t in range(3):
            table[t, : n_in[t]] = by_tier[t]
        pick = (rng.random(n) * n_in[self.tier]).astype(np.int64)
        self.brand = table[self.tier, pick]

        base = np.array([c[1] for c in CATEGORIES])
        tier_mult = np.array([0.7, 1.0, 1.65])
        raw = base[self.cat] * tier_mult[self.tier] * np.where(self.gf, 1.08, 1.0)
        raw = raw * rng.lognormal(0.0, 0.25, n)
        self.price = np.maximum(np.round(raw * 2.0) / 2.0 - 0.01, 0.99).round(2)

        # tags (independent flags; grain-free only on food)
        is_food = IS_FOOD[self.cat]
        pet = np.array([c[0].split("-")[0] for c in CATEGORIES])[self.cat]
        u = rng.random((len(TAGS), n))
        organic_p = np.array([0.04, 0.12, 0.35])[self.tier]
        flags = np.zeros((len(TAGS), n), dtype=bool)
        flags[0] = self.gf
        flags[1] = (is_food | np.isin(self.cat, [CI["cat-litter"], CI["small_animal-bedding"]])) & (u[1] < organic_p)
        flags[2] = is_food & (u[2] < 0.06 + 0.10 * (self.tier == 2))
        flags[3] = is_food & (u[3] < 0.08)
        flags[4] = is_food & (pet == "dog") & (u[4] < 0.08)
        flags[5] = is_food & (pet == "cat") & (u[5] < 0.08)
        flags[6] = is_food & (u[6] < 0.07)
        flags[7] = np.isin(self.cat, [CI["dog-dentaltreat"], CI["cat-dentaltreat"], CI["dog-supplement"]]) & (u[7] < 0.35)
        flags[8] = ~is_food & (u[8] < 0.15)
        self.tag_flags = flags

        # popularity inside a group and cumulative structure for picks
        self.weight = rng.lognormal(0.0, 0.8, n)
        self.cumw = np.cumsum(self.weight)
        ends = np.cumsum(grp)
        starts = ends - grp
        cw0 = np.concatenate([[0.0], self.cumw])
        self.g_lo = cw0[starts]  # cumulative weight before group
        self.g_hi = cw0[ends]  # cumulative weight at group end
        self.g_start = starts
        self.g_end = ends

    def pick(self, rng: np.random.Generator, cat: np.ndarray, tier: np.ndarray,
             gf_mode: np.ndarray) -> np.ndarray:
        """Popularity-weighted product index for each (category, tier, gf_mode).

        gf_mode 0: any product of (category, tier); 1: grain-free only; 2: not grain-free
        (modes 1 and 2 only for food categories, where both sub-groups are non-empty).
        """
        k0 = (cat.astype(np.int64) * 3 + tier) * 2
        # the full (c, t) range spans both gf sub-groups [k0, k0 + 1]
        lo = np.where(gf_mode == 1, self.g_lo[k0 + 1], self.g_lo[k0])
        hi = np.where(gf_mode == 2, self.g_hi[k0], self.g_hi[k0 + 1])
        x = lo + rng.random(cat.shape[0]) * (hi - lo)
        idx = np.searchsorted(self.cumw, x, side="right")
        return np.minimum(idx, self.g_end[k0 + 1] - 1)

    def table(self) -> pa.Table:
        n = self.n
        pid = np.arange(1, n + 1, dtype=np.int64)
        # per-category running number for names
        first = np.searchsorted(self.cat, np.arange(N_CAT))
        seq = np.arange(n) - first[self.cat] + 1
        brand_names = np.array([b[0] for b in BRANDS], dtype=object)
        kind = np.array(
            [c[0].split("-", 1)[1].replace("dryfood", "dry food").replace("wetfood", "wet food")
             .replace("dentaltreat", "dental treat").title() for c in CATEGORIES],
            dtype=object,
        )
        pet_label = np.array(
            [c[0].split("-")[0].replace("small_animal", "small animal").title() for c in CATEGORIES],
            dtype=object,
        )
        gf_label = np.where(self.gf, "Grain-Free ", "").astype(object)
        name = (brand_names[self.brand] + " " + gf_label + pet_label[self.cat] + " "
                + kind[self.cat] + " #" + seq.astype(str).astype(object))
        tag = np.full(n, "", dtype=object)
        for i, t in enumerate(TAGS):  # loop over the 9 tags, not rows
            f = self.tag_flags[i]
            tag = np.where(f, np.where(tag == "", t, tag + ("|" + t)), tag)
        return pa.table(
            {
                "product_id": pa.array(pid),
                "name": pa.array(name.tolist(), pa.string()),
                "category": _strings(self.cat, CAT_NAMES),
                "brand": _strings(self.brand, [b[0] for b in BRANDS]),
                "brand_tier": _strings(self.tier, TIERS),
                "tag": pa.array(tag.tolist(), pa.string()),
                "price": pa.array(self.price),
            },
            schema=SCHEMAS["products"],
        )


# ---------------------------------------------------------------------------
# Category preferences per customer profile
# ---------------------------------------------------------------------------


def _category_weights() -> np.ndarray:
    """(pet 6 x dryfood_feeder 2 x subscription 2, N_CAT) purchase weights."""
    def w(**kw: float) -> np.ndarray:
        v = np.zeros(N_CAT)
        for k, val in kw.items():
            v[CI[k.replace("__", "-").replace("_sa", "small_animal")]] = val
        return v

    dog_feeder = w(dog__dryfood=6.0, dog__wetfood=1.2, dog__dentaltreat=1.3, dog__treat=2.5,
                   dog__toy=2.0, dog__bed=0.5, dog__leash=0.7, dog__shampoo=0.7, dog__supplement=0.7)
    dog_other = w(dog__dryfood=0.25, dog__wetfood=6.0, dog__dentaltreat=0.8, dog__treat=2.5,
                  dog__toy=2.0, dog__bed=0.5, dog__leash=0.7, dog__shampoo=0.7, dog__supplement=0.7)
    cat = w(cat__dryfood=4.0, cat__wetfood=4.0, cat__litter=4.0, cat__treat=2.0, cat__toy=1.5,
            cat__scratcher=0.5, cat__dentaltreat=0.6)
    small = w(_sa__food=6.0, _sa__bedding=3.0, _sa__cage=0.4)
    fish = w(fish__food=6.0, fish__aquarium=0.3, fish__filter=1.2)
    none = np.ones(N_CAT)
    base = {
        "dog": (dog_other, dog_feeder),
        "cat": (cat, cat),
        "dog+cat": (0.55 * dog_other / dog_other.sum() + 0.45 * cat / cat.sum(),
                    0.55 * dog_feeder / dog_feeder.sum() + 0.45 * cat / cat.sum()),
        "small_animal": (small, small),
        "fish": (fish, fish),
        "none": (none, none),
    }
    rows = []
    for pet in PETS:
        for feeder in (0, 1):
            v = base[pet][feeder]
            rows.append(v)  # regular order
            sub = v * IS_CONSUMABLE
            rows.append(sub if sub.sum() > 0 else v)  # subscription order
    return np.array(rows)


# tier preference (value, standard, premium) by band (rows 0..3) and grain-free seeker (rows 4..7)
TIER_P = np.array(
    [
        [0.50, 0.38, 0.12],
        [0.35, 0.45, 0.20],
        [0.22, 0.45, 0.33],
        [0.12, 0.40, 0.48],
        [0.10, 0.25, 0.65],
        [0.07, 0.22, 0.71],
        [0.04, 0.18, 0.78],
        [0.03, 0.15, 0.82],
    ]
)



def _gf_mode(rng: np.random.Generator, seek: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """Grain-free choice for food purchases: seekers take grain-free 85% of the time,
    everybody else avoids it 75% of the time (and otherwise picks by popularity)."""
    u = rng.random(cat.shape[0])
    food = IS_FOOD[cat]
    mode = np.where(seek, np.where(u < 0.85, 1, 0), np.where(u < 0.75, 2, 0))
    return np.where(food, mode, 0).astype(np.int8)


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


def generate_demo(
    out_dir: str | os.PathLike,
    n_customers: int = 100_000,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Write the demo shop tables as Parquet plus ``spec.toml`` into ``out_dir``.

    Returns the path of ``spec.toml``.  Deterministic in ``(n_customers, seed)``.
    """
    n = int(n_customers)
    if n < 1:
        raise ValueError("n_customers must be >= 1")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    t_all = time.perf_counter()

    ss = np.random.SeedSequence(int(seed))
    r_cust, r_prod, r_ord, r_line, r_churn, r_ev = (np.random.default_rng(s) for s in ss.spawn(6))

    # ---------------- products ----------------
    t0 = time.perf_counter()
    catalog = _Catalog(r_prod, _n_products(n))
    _write(catalog.table(), out / "products.parquet")
    say(f"products: {catalog.n:,} rows written ({time.perf_counter() - t0:.1f} s)")

    # ---------------- customers (attributes and latents) ----------------
    t0 = time.perf_counter()
    say(f"simulating {n:,} customers ...")
    rc = r_cust
    region = rc.choice(len(REGIONS), size=n, p=REGION_P)
    tenure = np.minimum(1 + np.floor(rc.gamma(1.5, 18.0, n)), 144).astype(np.int32)
    band_score = 0.45 * np.log(tenure) + rc.normal(0.0, 1.0, n)
    if n >= 4:
        cuts = np.quantile(band_score, BAND_CUM)
    else:
        cuts = np.array([0.0, 1.0, 2.0])
    band = np.searchsorted(cuts, band_score).astype(np.int64)
    signup = rc.choice(len(SIGNUP), size=n, p=SIGNUP_P)
    age = np.clip(np.round(rc.normal(44.0, 14.0, n)), 18, 85).astype(np.int32)
    pet = rc.choice(len(PETS), size=n, p=PET_P)
    newsletter = rc.random(n) < (0.28 + 0.05 * band)
    has_dog = (pet == 0) | (pet == 2)
    feeder = has_dog & (rc.random(n) < 0.55)  # dry-food feeding dog owners
    # grain-free seekers: dog/cat owners, concentrated in the north and high/vip bands
    seek_p = 0.045 * np.where(region == R_NORTH, 5.0, 1.0) * np.array([0.4, 1.0, 2.6, 3.4])[band]
    seeker = (pet <= 2) & (rc.random(n) < np.minimum(seek_p, 0.9))
    subscriber = rc.random(n) < np.where(pet == 5, 0.02, 0.15 + 0.05 * band)
    activity = rc.gamma(2.0, 0.5, n)  # mean 1
    returner = rc.beta(1.2, 18.0, n)  # per-customer return propensity, mean ~0.06

    # ---------------- orders ----------------
    ro = r_ord
    band_rate = np.array([1.6, 2.9, 4.4, 6.6])
    tenure_f = np.sqrt(np.minimum(tenure, N_MONTHS) / N_MONTHS)
    rate = band_rate[band] * activity * np.where(subscriber, 1.5, 1.0) * np.where(pet == 5, 0.45, 1.0)
    n_orders = ro.poisson(rate * (0.55 + 0.65 * tenure_f))
    n_ord_total = int(n_orders.sum())
    o_cust = np.repeat(np.arange(n, dtype=np.int64), n_orders)
    o_sub = subscriber[o_cust] & (ro.random(n_ord_total) < 0.6)
    o_channel = _sample_rows(ro, _cdf_rows(ORDER_CHANNEL_P), signup[o_cust])
    lam = np.where(o_sub, 0.9, 1.9 + 0.25 * band[o_cust])
    o_nlines = 1 + ro.poisson(lam)

    # ---------------- order lines ----------------
    rl = r_line
    n_lines_total = int(o_nlines.sum())
    l_order = np.repeat(np.arange(n_ord_total, dtype=np.int64), o_nlines)
    l_cust = o_cust[l_order]
    l_sub = o_sub[l_order]
    cat_cdf = _cdf_rows(_category_weights())
    grp = (pet[l_cust] * 2 + feeder[l_cust]) * 2 + l_sub
    l_cat = _sample_rows(rl, cat_cdf, grp)
    del grp
    l_seek = seeker[l_cust]
    l_tier = _sample_rows(rl, _cdf_rows(TIER_P), band[l_cust] + 4 * l_seek)
    l_prod = catalog.pick(rl, l_cat, l_tier, _gf_mode(rl, l_seek, l_cat))
    del l_tier, l_seek
    qty_lam = np.where(l_sub & IS_FOOD[l_cat], 0.8, 0.35)
    l_qty = np.minimum(1 + rl.poisson(qty_lam), 12).astype(np.int32)
    del qty_lam
    l_price = np.round(catalog.price[l_prod] * np.where(l_sub, 0.95, 1.0), 2)
    ret_mult = np.array([c[3] for c in CATEGORIES])
    l_ret = rl.random(n_lines_total) < returner[l_cust] * ret_mult[l_cat]
    del l_sub
    o_total = np.round(np.bincount(l_order, weights=l_qty * l_price, minlength=n_ord_total), 2)

    # ---------------- churn (target) ----------------
    c_lines = np.bincount(l_cust, minlength=n)
    c_ret = np.bincount(l_cust, weights=l_ret, minlength=n)
    ret_rate = np.where(c_lines > 0, c_ret / np.maximum(c_lines, 1), 0.0)
    c_sub = np.bincount(o_cust, weights=o_sub, minlength=n) > 0
    region_eff = np.zeros(len(REGIONS))
    region_eff[R_ISLANDS] = 1.2
    region_eff[REGIONS.index("capital")] = -0.1
    band_eff = np.array([0.35, 0.0, -0.3, -0.6])
    logit = (
        -0.55
        + region_eff[region]
        + band_eff[band]
        - 0.7 * newsletter
        - 0.35 * np.log(tenure / 12.0)
        - 0.45 * np.log1p(n_orders)
        - 0.55 * c_sub
        + 2.0 * ret_rate
        + 0.25 * (signup == SIGNUP.index("referral"))
    )
    churned = r_churn.random(n) < 1.0 / (1.0 + np.exp(-logit))
    del c_ret, ret_rate, logit

    # ---------------- order months (recency follows churn) ----------------
    first = np.maximum(0, N_MONTHS - tenure).astype(np.int64)
    gap = r_churn.geometric(0.16, n)  # churned customers stop ordering `gap` months before the end
    last = np.where(churned, np.maximum(first, N_MONTHS - 1 - gap), N_MONTHS - 1)
    span = (last - first + 1)[o_cust]
    month = first[o_cust] + np.minimum((r_churn.random(n_ord_total) ** 0.9 * span).astype(np.int64), span - 1)
    # orders of a customer are exchangeable: give them their months in ascending order
    month = np.sort(o_cust * N_MONTHS + month) - o_cust * N_MONTHS

    say(f"simulated {n_ord_total:,} orders, {n_lines_total:,} order lines "
        f"({time.perf_counter() - t0:.1f} s)")

    # ---------------- write customers / orders / lines ----------------
    t0 = time.perf_counter()
    cust_id = np.arange(1, n + 1, dtype=np.int64)
    customers = pa.table(
        {
            "customer_id": pa.array(cust_id),
            "region": _strings(region, REGIONS),
            "lifetime_value_band": _strings(band, BANDS),
            "signup_channel": _strings(signup, SIGNUP),
            "age": pa.array(age),
            "tenure_months": pa.array(tenure),
            "pet_type": _strings(pet, PETS),
            "newsletter": pa.array(newsletter),
            "churned": pa.array(churned),
        },
        schema=SCHEMAS["customers"],
    )
    _write(customers, out / "customers.parquet")
    del customers
    say(f"customers: {n:,} rows written ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    orders = pa.table(
        {
            "order_id": pa.array(np.arange(1, n_ord_total + 1, dtype=np.int64)),
            "customer_id": pa.array(o_cust + 1),
            "order_month": _strings(month, MONTHS),
            "channel": _strings(o_channel, ORDER_CHANNELS),
            "subscription": pa.array(o_sub),
            "total": pa.array(o_total),
        },
        schema=SCHEMAS["orders"],
    )
    _write(orders, out / "orders.parquet")
    del orders, month, o_channel, o_total, o_sub
    say(f"orders: {n_ord_total:,} rows written ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    lines = pa.table(
        {
            "line_id": pa.array(np.arange(1, n_lines_total + 1, dtype=np.int64)),
            "order_id": pa.array(l_order + 1),
            "customer_id": pa.array(l_cust + 1),
            "product_id": pa.array(l_prod + 1),
            "qty": pa.array(l_qty),
            "unit_price": pa.array(l_price),
            "returned": pa.array(l_ret),
        },
        schema=SCHEMAS["order_lines"],
    )
    _write(lines, out / "order_lines.parquet")
    del lines, l_order, l_cust, l_prod, l_qty, l_price, l_ret, l_cat
    say(f"order_lines: {n_lines_total:,} rows written ({time.perf_counter() - t0:.1f} s)")

    # ---------------- events ----------------
    t0 = time.perf_counter()
    re_ = r_ev
    n_ev = re_.poisson(5.0 * (0.4 + 0.6 * activity) * np.where(pet == 5, 0.6, 1.06))
    n_ev_total = int(n_ev.sum())
    e_cust = np.repeat(np.arange(n, dtype=np.int64), n_ev)
    e_seek = seeker[e_cust]
    e_type = _sample_rows(re_, _cdf_rows(EVENT_P), e_seek.astype(np.int64))
    has_prod = (e_type == 0) | (e_type == 3)
    e_cat = _sample_rows(re_, cat_cdf, (pet[e_cust] * 2 + feeder[e_cust]) * 2)
    e_tier = _sample_rows(re_, _cdf_rows(TIER_P), band[e_cust] + 4 * e_seek)
    e_prod = catalog.pick(re_, e_cat, e_tier, _gf_mode(re_, e_seek, e_cat))
    del e_cat, e_tier
    e_filter = _sample_rows(re_, _cdf_rows(FILTER_P), 2 * e_seek + (band[e_cust] >= 2))
    term_w = np.zeros((len(PETS), len(SEARCH_TERMS)))
    for i, p in enumerate(PETS):  # 6 pet types
        keys = {"dog+cat": ["dog", "cat"]}.get(p, [p])
        for k in keys:
            for t in SEARCH_TERMS_BY_PET[k]:
                term_w[i, SEARCH_TERMS.index(t)] = 1.0
    e_term = _sample_rows(re_, _cdf_rows(term_w), pet[e_cust])
    events = pa.table(
        {
            "event_id": pa.array(np.arange(1, n_ev_total + 1, dtype=np.int64)),
            "customer_id": pa.array(e_cust + 1),
            "event_type": _strings(e_type, EVENT_TYPES),
            "product_id": pa.array(e_prod + 1, mask=~has_prod),
            "filter": _strings(e_filter, FILTERS, mask=e_type != 2),
            "search_term": _strings(e_term, SEARCH_TERMS, mask=e_type != 1),
        },
        schema=SCHEMAS["events"],
    )
    _write(events, out / "events.parquet")
    del events
    say(f"events: {n_ev_total:,} rows written ({time.perf_counter() - t0:.1f} s)")

    spec = out / "spec.toml"
    spec.write_text(_spec_toml(n, int(seed)), encoding="utf-8")
    say(f"spec: {spec} ({time.perf_counter() - t_all:.1f} s total)")
    return spec


# ---------------------------------------------------------------------------
# spec.toml
# ---------------------------------------------------------------------------


def _spec_toml(n_customers: int, seed: int) -> str:
    return f'''# segsrv snapshot spec for the synthetic demo shop (written by segsrv.demo.generate)
name = "demo"
description = "segsrv synthetic demo shop, {n_customers} customers, seed {seed}"

[tables.customers]
file = "customers.parquet"
key = "customer_id"
categorical = ["region", "lifetime_value_band", "signup_channel", "pet_type", "newsletter", "churned"]
numeric = {{ age = {{ edges = [25, 35, 45, 55, 65] }}, tenure_months = {{ quantiles = 4 }} }}

[tables.products]
file = "products.parquet"
key = "product_id"
categorical = ["category", "brand", "brand_tier", "name"]
multi = {{ tag = "|" }}
numeric = {{ price = {{ edges = [5, 10, 20, 50, 100] }} }}

[tables.orders]
file = "orders.parquet"
key = "order_id"
categorical = ["channel", "order_month", "subscription"]
numeric = {{ total = {{ quantiles = 4 }} }}
links = {{ customer = {{ column = "customer_id", table = "customers", reverse = "orders" }} }}

[tables.order_lines]
file = "order_lines.parquet"
key = "line_id"
categorical = ["returned"]
numeric = {{ qty = {{ edges = [2, 3, 5] }}, unit_price = {{ edges = [5, 10, 20, 50, 100] }} }}

[tables.order_lines.links]
order = {{ column = "order_id", table = "orders", reverse = "lines" }}
customer = {{ column = "customer_id", table = "customers", reverse = "order_lines" }}
product = {{ column = "product_id", table = "products", reverse = "order_lines" }}

[tables.events]
file = "events.parquet"
key = "event_id"
categorical = ["event_type", "filter", "search_term"]

[tables.events.links]
customer = {{ column = "customer_id", table = "customers", reverse = "events" }}
product = {{ column = "product_id", table = "products", reverse = "events" }}

[universes.customers]
table = "customers"
include = [
    "*",
    "orders.channel",
    "orders.subscription",
    "orders.order_month",
    "orders.total",
    "orders.lines.product.category",
    "orders.lines.product.brand",
    "orders.lines.product.name",
    "orders.lines.product.brand_tier",
    "orders.lines.product.tag",
    "orders.lines.returned",
    "events.event_type",
    "events.filter",
    "events.search_term",
    "events.product.category",
]

[universes.order_lines]
table = "order_lines"
include = [
    "*",
    "product.category",
    "product.brand",
    "product.brand_tier",
    "product.tag",
    "product.price",
    "customer.*",
    "order.channel",
    "order.subscription",
]
'''
