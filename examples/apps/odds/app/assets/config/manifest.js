//= link application.css
//= link application.js
