"""`scldm app`: a web page where anyone records or uploads speech and sees faces from one or
more trained models side by side. `studio` holds the models and the request handler (no web
framework); `page` lays it out with Gradio (`pip install 'scldm[app]'`) and serves it."""
