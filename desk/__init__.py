"""The front desk in a browser: a small local web app over the gallery, enrolment and event code
that tools/enroll_local.py uses (`enroll_local.py serve` starts it; docs/desk.md).

app.py        the shared state, rendering and the role guard; create_app
auth.py       logging in and out (rate limit, lockout)
people.py     the people list and a person's pages
enrol.py      enrolling from uploaded photos and from the webcam
events_page.py the event log: filters, live rows, CSV
doors.py      the fleet's doors and publishing the gallery
operators.py  operators, roles and sessions (desk.db)
security.py   headers, the request size limit, login rate limiting
uploads.py    what an uploaded photo must be before it is decoded
server.py     uvicorn, with TLS, on the address the rules allow
"""
