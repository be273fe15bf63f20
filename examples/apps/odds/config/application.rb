require_relative "boot"

# Only the parts of Rails this app uses: no database, no mailer, no cable.
require "rails"
require "action_controller/railtie"
require "action_view/railtie"
require "sprockets/railtie"

Bundler.require(*Rails.groups)

module Odds
  class Application < Rails::Application
    config.load_defaults 6.1
    config.eager_load = true
  end
end
