"""The web page of ``screader-db serve``: annotate an upload and look at the lab atlas in a browser.

:mod:`screader_db.web.routes` adds the pages and their JSON to the server's application,
:mod:`screader_db.web.jobs` runs one upload's annotation and writes what the page shows and offers,
:mod:`screader_db.web.result_store` keeps those results on disk for a while. The pages themselves
(``static/``) are plain HTML, CSS and JavaScript shipped inside the package: nothing is loaded from
elsewhere.
"""
