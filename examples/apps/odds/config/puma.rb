# PORT (default 3000) sets the listening port.
port ENV.fetch("PORT", 3000)
environment ENV.fetch("RAILS_ENV", "production")
threads 2, 4
workers 0
