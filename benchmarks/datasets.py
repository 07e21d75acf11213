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


def _movielens_items_file(folder: str, dataset_file: str) -> Optional[pd.DataFrame]:
    """The movies file that goes with a GroupLens ratings file (same ids), if there is one."""
    name = os.path.basename(dataset_file).lower()
    if name == "ratings.csv" and os.path.isfile(os.path.join(folder, "movies.csv")):
        raw = pd.read_csv(os.path.join(folder, "movies.csv"), dtype=str)
        return movielens_items(raw["movieId"], raw["title"], raw["genres"])
    if name == "ratings.dat" and os.path.isfile(os.path.join(folder, "movies.dat")):
        raw = _movies_dat(os.path.join(folder, "movies.dat"))
        return movielens_items(raw["orig"], raw["title"], raw["genres"])
    return None


def item2attributes_items(path: str) -> pd.DataFrame:
    with open(path) as fh:
        data = json.load(fh)
    return pd.DataFrame({"item_id": list(data.keys()),
                         "tags": ["|".join(str(a) for a in v) for v in data.values()]})


def side_files(dataset_file: str, out_dir: str) -> dict[str, str]:
    """Find and convert the side files next to a dataset file; {"users": dir, "items": dir} for
    those found (empty when there are none)."""
    folder = os.path.dirname(os.path.abspath(dataset_file))
    name = os.path.basename(dataset_file)
    found: dict[str, pd.DataFrame] = {}
    if name.lower() in ("ratings.csv", "ratings.dat"):  # GroupLens form: the side files share its ids
        if name.lower() == "ratings.dat" and os.path.isfile(os.path.join(folder, "users.dat")):
            found["users"] = ml1m_users(os.path.join(folder, "users.dat"))
        movies = _movielens_items_file(folder, dataset_file)
        if movies is not None:
            found["items"] = movies
    else:
        users_map, items_map = (os.path.join(folder, f"sas_to_original_{x}.txt") for x in ("users", "items"))
        if os.path.isfile(os.path.join(folder, "users.dat")) and os.path.isfile(users_map):
            found["users"] = ml1m_users(os.path.join(folder, "users.dat"), users_map)
        if os.path.isfile(os.path.join(folder, "movies.dat")) and os.path.isfile(items_map):
            found["items"] = ml1m_items(os.path.join(folder, "movies.dat"), items_map)
        attrs = os.path.join(folder, f"{os.path.splitext(name)[0]}_item2attributes.json")
        if "items" not in found and os.path.isfile(attrs):
            found["items"] = item2attributes_items(attrs)
    paths = {}
    for name, df in found.items():
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        df.to_csv(os.path.join(d, f"{name}.csv"), index=False)
        paths[name] = d
    return paths
