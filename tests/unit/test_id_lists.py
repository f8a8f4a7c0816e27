import numpy as np

from stream_app.core.id_lists import join_rows, padded, split_rows


def test_rows_come_back_as_they_went():
    rows = [["50", "181", "7"], [], ["ünïcode-id"], ["a", "", "b"]]
    column = join_rows(rows)
    assert column.shape == (4, 1) and column.dtype == object
    assert split_rows(column) == rows


def test_split_takes_str_elements_too():
    assert split_rows(np.array([["1\t2"], [""]], dtype=object)) == [["1", "2"], []]


def test_padding_keeps_every_row_at_the_longest_width():
    table = padded([["1", "2"], [], ["3"]])
    assert table.tolist() == [["1", "2"], ["", ""], ["3", ""]]
    assert padded([[], []]).shape == (2, 1)  # never zero columns
    assert padded([["1"]], width=3).tolist() == [["1", "", ""]]
