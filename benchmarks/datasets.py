"""Side files of the public benchmark datasets, converted to the ingest contract (users / items CSV).

    ml-1m (SASRec form): users.dat (UserID::Gender::Age::Occupation::Zip-code) and movies.dat
        (MovieID::Title (Year)::Genre|Genre, latin-1), joined to the SASRec ids through
        sas_to_original_users.txt / sas_to_original_items.txt. Users get gender, age_band and
        occupation (the MovieLens codes' names) and region (first zip digit); items get title,
        category (first genre) and tags (all genres).
    amazon-beauty (S3-Rec form): Beauty_item2attributes.json ({item_id: [attribute ids]}) -> items
        with tags (the attribute ids). Only the file named after the dataset file counts
        (`X.txt` reads `X_item2attributes.json`): the S3-Rec collection ships several such pairs,
        whose item ids overlap.
    MovieLens (GroupLens form): movies.csv (movieId,title,genres, as ml-latest and ml-20m/25m ship
        it, beside ratings.csv) or movies.dat (MovieID::Title::Genres, beside ratings.dat) -> items
        with title, category (first genre) and tags (all genres); beside ratings.dat, users.dat as
        for ml-1m, with its own ids.

The files stay where they are (their terms forbid redistribution); `side_files` writes converted
copies into a work folder and returns the paths for ingest.users / ingest.items.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import pandas as pd


def _mapping(path: str) -> dict[str, str]:
    """sas_to_original_*.txt: `sas_id original_id` per line -> {original: sas}."""
    pairs = pd.read_csv(path, sep=r"\s+", header=None, names=["sas", "orig"], dtype=str)
    if pairs["orig"].duplicated().any() or pairs["sas"].duplicated().any():
        raise ValueError(f"{path}: the id mapping is not one-to-one")
    return dict(zip(pairs["orig"], pairs["sas"]))


# The codes of MovieLens 1M's users.dat, as its README defines them: reports show these names.
ML1M_AGES = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
ML1M_OCCUPATIONS = {str(code): name for code, name in enumerate([
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer"])}


def ml1m_users(users_dat: str, mapping_file: Optional[str] = None) -> pd.DataFrame:
    """users.dat joined to the SASRec ids (kept as they are without a mapping file: beside
    ratings.dat); age and occupation codes become their names (an unknown code is kept as it is),
    region is the first zip digit."""
    raw = pd.read_csv(users_dat, sep="::", engine="python", header=None, encoding="latin-1", dtype=str,
                      names=["orig", "gender", "age", "occupation", "zip"])
    m = _mapping(mapping_file) if mapping_file else dict(zip(raw["orig"], raw["orig"]))
    raw = raw[raw["orig"].isin(m)]
    return pd.DataFrame({"user_id": raw["orig"].map(m), "gender": raw["gender"],
                         "age_band": raw["age"].map(lambda a: ML1M_AGES.get(a, a)),
                         "occupation": raw["occupation"].map(lambda o: ML1M_OCCUPATIONS.get(o, o)),
                         "region": raw["zip"].str[:1]})


def movielens_items(ids: pd.Series, titles: pd.Series, genres: pd.Series) -> pd.DataFrame:
    """MovieLens movies as items: category the first genre, tags all of them ('|'-separated);
    '(no genres listed)' leaves both empty."""
    genres = genres.where(genres != "(no genres listed)")
    return pd.DataFrame({"item_id": ids.values, "title": titles.values,
                         "category": genres.str.split("|").str[0].values, "tags": genres.values})


def _movies_dat(path: str) -> pd.DataFrame:
    return pd.read_csv(path, sep="::", engine="python", header=None, encoding="latin-1", dtype=str,
                       names=["orig", "title", "genres"])


def ml1m_items(movies_dat: str, mapping_file: str) -> pd.DataFrame:
    m = _mapping(mapping_file)
    raw = _movies_dat(movies_dat)
    raw = raw[raw["orig"].isin(m)]
    return movielens_items(raw["orig"].map(m), raw["title"], raw["genres"])


def item2attributes_items(path: str) -> pd.DataFrame:
    with open(path) as fh:
        data = json.load(fh)
    return pd.DataFrame({"item_id": list(data.keys()),
                         "tags": ["|".join(str(a) for a in v) for v in data.values()]})


def side_file_paths(dataset_file: str) -> list[str]:
    """The side files that go with a dataset file, where they exist (see the module's formats)."""
    folder = os.path.dirname(os.path.abspath(dataset_file))
    name = os.path.basename(dataset_file).lower()
    if name == "ratings.csv":
        names = ["movies.csv"]
    elif name == "ratings.dat":
        names = ["users.dat", "movies.dat"]
    else:
        names = ["users.dat", "movies.dat", "sas_to_original_users.txt", "sas_to_original_items.txt",
                 f"{os.path.splitext(os.path.basename(dataset_file))[0]}_item2attributes.json"]
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def side_files(dataset_file: str, out_dir: str) -> dict[str, str]:
    """Find and convert the side files next to a dataset file; {"users": dir, "items": dir} for
    those found (empty when there are none)."""
    side = {os.path.basename(p): p for p in side_file_paths(dataset_file)}
    found: dict[str, pd.DataFrame] = {}
    if "movies.csv" in side:
        raw = pd.read_csv(side["movies.csv"], dtype=str)
        found["items"] = movielens_items(raw["movieId"], raw["title"], raw["genres"])
    grouplens = os.path.basename(dataset_file).lower() == "ratings.dat"  # the side files share its ids
    if "users.dat" in side and ("sas_to_original_users.txt" in side or grouplens):
        found["users"] = ml1m_users(side["users.dat"], side.get("sas_to_original_users.txt"))
    if "movies.dat" in side and "sas_to_original_items.txt" in side:
        found["items"] = ml1m_items(side["movies.dat"], side["sas_to_original_items.txt"])
    elif "movies.dat" in side and grouplens:
        raw = _movies_dat(side["movies.dat"])
        found["items"] = movielens_items(raw["orig"], raw["title"], raw["genres"])
    attrs = [p for n, p in side.items() if n.endswith("_item2attributes.json")]
    if attrs and "items" not in found:
        found["items"] = item2attributes_items(attrs[0])
    paths = {}
    for name, df in found.items():
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        df.to_csv(os.path.join(d, f"{name}.csv"), index=False)
        paths[name] = d
    return paths
