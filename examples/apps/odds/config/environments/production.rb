Rails.application.configure do
  config.cache_classes = true
  config.eager_load = true
  config.consider_all_requests_local = false
  # The image has no web server in front: puma serves public/ (the precompiled
  # assets) itself, with far-future caching since their names carry a digest.
  config.public_file_server.enabled = true
  config.public_file_server.headers = { "Cache-Control" => "public, max-age=31536000, immutable" }
  # Assets are precompiled by the Rails builder; a missing one is an error, never compiled at runtime.
  config.assets.compile = false
  config.assets.css_compressor = :sass
  config.log_level = :info
  config.log_tags = [:request_id]
  config.logger = ActiveSupport::TaggedLogging.new(ActiveSupport::Logger.new($stdout))
  config.active_support.deprecation = :notify
end
