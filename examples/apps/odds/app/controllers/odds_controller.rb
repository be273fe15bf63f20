# A board of matches and their decimal odds; the page's script works out a
# bet's payout in the browser.
class OddsController < ApplicationController
  MATCHES = [
    { home: "Dinamo", away: "Hajduk", odds: [2.10, 3.25, 3.40] },
    { home: "Rijeka", away: "Osijek", odds: [1.85, 3.50, 4.20] },
    { home: "Lokomotiva", away: "Gorica", odds: [2.60, 3.10, 2.75] },
  ].freeze

  def index
    @matches = MATCHES
  end

  def health
    render plain: "ok\n"
  end
end
