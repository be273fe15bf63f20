// webpack turns src/ into dist/: one content-hashed bundle and the index.html that loads it.
const path = require("path");
const HtmlWebpackPlugin = require("html-webpack-plugin");

module.exports = {
  entry: "./src/index.js",
  output: {
    path: path.resolve(__dirname, "dist"),
    filename: "[name].[contenthash:12].js",
    clean: true,
  },
  plugins: [
    new HtmlWebpackPlugin({ template: "./src/index.html", title: "deployer: sensor and worker" }),
  ],
  performance: { hints: false },
};
