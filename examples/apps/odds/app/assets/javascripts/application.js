// Pick an outcome: show what a stake of 10 pays at its odds.
document.addEventListener("DOMContentLoaded", function () {
  var payout = document.querySelector(".payout");
  document.querySelectorAll(".pick").forEach(function (button) {
    button.addEventListener("click", function () {
      document.querySelectorAll(".pick.chosen").forEach(function (b) { b.classList.remove("chosen"); });
      button.classList.add("chosen");
      var odds = parseFloat(button.dataset.odds);
      payout.textContent = "Stake 10 pays " + (10 * odds).toFixed(2) + ".";
    });
  });
});
