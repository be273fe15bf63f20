Rails.application.routes.draw do
  root "odds#index"
  get "health", to: "odds#health"
end
